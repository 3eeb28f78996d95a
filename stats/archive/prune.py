"""Removing history older than a time, in bounded batches.

Old means: events whose `ts_ms` is before the cutoff; messages accepted before it, with all their
recipients; topics with no event since it and no message left. Each batch (at most `batch` rows)
is its own short transaction, so a prune of years of history never holds the database for long
and the archive writer goes on between batches. A prune stopped half-way leaves consistent
rows (a message is deleted only after its last recipient) and can simply be run again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sesflow.stats.archive.db import Database

DEFAULT_BATCH = 5000
MESSAGES_PER_ROUND = 100


@dataclass
class Pruned:
    events: int = 0
    recipients: int = 0
    messages: int = 0
    topics: int = 0


async def prune(db: Database, before_ms: int, batch: int = DEFAULT_BATCH) -> Pruned:
    batch = max(1, batch)
    pruned = Pruned()
    while True:
        async with db.transaction() as tx:
            gone = await tx.fetch(
                "DELETE FROM events WHERE (partition, entry_id) IN (SELECT partition, entry_id "
                "FROM events WHERE ts_ms < $1 LIMIT $2) RETURNING partition",
                before_ms,
                batch,
            )
        pruned.events += len(gone)
        if len(gone) < batch:
            break
    while await _prune_messages(db, before_ms, batch, pruned):
        pass
    async with db.transaction() as tx:
        topics = await tx.fetch(
            "DELETE FROM topics WHERE last_at_ms < $1 AND messages <= 0 RETURNING topic",
            before_ms,
        )
    pruned.topics = len(topics)
    return pruned


async def _prune_messages(db: Database, before_ms: int, batch: int, pruned: Pruned) -> bool:
    """One round of old messages (their recipients first); False once none is left."""
    old = await db.fetch(
        "SELECT msg_id FROM messages WHERE accepted_at_ms < $1 "
        "ORDER BY accepted_at_ms, msg_id LIMIT $2",
        before_ms,
        MESSAGES_PER_ROUND,
    )
    for row in old:
        msg_id = row["msg_id"]
        while True:
            async with db.transaction() as tx:
                gone = await tx.fetch(
                    "DELETE FROM recipients WHERE msg_id = $1 AND idx IN (SELECT idx FROM "
                    "recipients WHERE msg_id = $1 ORDER BY idx LIMIT $2) RETURNING idx",
                    msg_id,
                    batch,
                )
                if len(gone) < batch:
                    # The last recipients and the message go together.
                    message = await tx.fetch(
                        "DELETE FROM messages WHERE msg_id = $1 RETURNING topic", msg_id
                    )
                    for deleted in message:
                        await tx.execute(
                            "UPDATE topics SET messages = messages - 1 WHERE topic = $1",
                            deleted["topic"],
                        )
                    pruned.messages += len(message)
            pruned.recipients += len(gone)
            if len(gone) < batch:
                break
    return len(old) == MESSAGES_PER_ROUND

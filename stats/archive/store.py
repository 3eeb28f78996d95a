"""Writing one `ArchiveBatch` in one transaction, idempotently.

- events: `ON CONFLICT (partition, entry_id) DO NOTHING`, so a redelivered entry inserts nothing;
- recipients: one upsert per recipient whose `CASE`s apply the precedence of `vocabulary`
  against the stored row (the same as `RecipientRow.apply`), so a late older event never
  overwrites a newer state and a redelivered batch changes nothing;
- messages: inserted on their first event (`DO NOTHING ... RETURNING` says which are new: only
  those add to their topic's `messages`); an `accepted` event sets subject, lane and total;
- topics: first and last event time, and their count of messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sesflow.stats.archive.batch import ArchiveBatch, RecipientRow
from sesflow.stats.archive.db import Session

_INSERT_EVENTS = """INSERT INTO events (partition, entry_id, ts_ms, type, topic, msg_id, idx, n,
    email, ses_id, detail, bounce_type, bounce_subtype, url)
    {rows} ON CONFLICT (partition, entry_id) DO NOTHING"""

# Postgres: the same statements over column arrays, one statement per batch instead of one per
# row (a row-by-row executemany costs Postgres a round of parse-bind-execute each).
EVENT_COLUMN_TYPES = (
    "int", "text", "bigint", "text", "text", "text", "int", "int",
    "text", "text", "text", "text", "text", "text",
)  # fmt: skip
RECIPIENT_COLUMN_TYPES = (
    "text", "int", "text", "text", "int", "bigint", "text", "text", "int", "bigint", "bigint",
    "bigint",
)  # fmt: skip


def unnest(types: Sequence[str]) -> str:
    arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(types, start=1))
    return f"SELECT * FROM unnest({arrays})"


def values(count: int) -> str:
    return "VALUES (" + ", ".join(f"${n}" for n in range(1, count + 1)) + ")"


_BETTER_STATE = """(excluded.state_rank > recipients.state_rank OR
    (excluded.state_rank = recipients.state_rank
     AND excluded.state_at_ms > recipients.state_at_ms))"""
_LATER_EVENT = """(excluded.last_event_at_ms > recipients.last_event_at_ms OR
    (excluded.last_event_at_ms = recipients.last_event_at_ms
     AND excluded.last_event_rank > recipients.last_event_rank))"""
_LATER_SEND = """(excluded.sent_at_ms IS NOT NULL AND
    (recipients.sent_at_ms IS NULL OR excluded.sent_at_ms > recipients.sent_at_ms))"""


def _pick(condition: str, column: str) -> str:
    return f"{column} = CASE WHEN {condition} THEN excluded.{column} ELSE recipients.{column} END"


_UPSERT_RECIPIENTS = f"""INSERT INTO recipients (msg_id, idx, email, state, state_rank,
    state_at_ms, ses_id, last_event, last_event_rank, last_event_at_ms, sent_at_ms, updated_at_ms)
    {{rows}} ON CONFLICT (msg_id, idx) DO UPDATE SET
    {_pick("recipients.email = ''", "email")},
    {_pick(_BETTER_STATE, "state")},
    {_pick(_BETTER_STATE, "state_rank")},
    {_pick(_BETTER_STATE, "state_at_ms")},
    {_pick(_LATER_EVENT, "last_event")},
    {_pick(_LATER_EVENT, "last_event_rank")},
    {_pick(_LATER_EVENT, "last_event_at_ms")},
    ses_id = CASE WHEN {_LATER_SEND} AND excluded.ses_id <> '' THEN excluded.ses_id
        WHEN recipients.ses_id = '' THEN excluded.ses_id ELSE recipients.ses_id END,
    {_pick(_LATER_SEND, "sent_at_ms")},
    {_pick("excluded.updated_at_ms > recipients.updated_at_ms", "updated_at_ms")}"""

INSERT_EVENTS = _INSERT_EVENTS.format(rows=values(len(EVENT_COLUMN_TYPES)))
INSERT_EVENTS_UNNEST = _INSERT_EVENTS.format(rows=unnest(EVENT_COLUMN_TYPES))
UPSERT_RECIPIENTS = _UPSERT_RECIPIENTS.format(rows=values(len(RECIPIENT_COLUMN_TYPES)))
UPSERT_RECIPIENTS_UNNEST = _UPSERT_RECIPIENTS.format(rows=unnest(RECIPIENT_COLUMN_TYPES))

UPDATE_ACCEPTED = """UPDATE messages SET topic = $2, subject = $3, lane = $4, total = $5,
    scheduled_at_ms = $6 WHERE msg_id = $1"""

UPSERT_TOPICS = """INSERT INTO topics (topic, first_at_ms, last_at_ms, messages)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (topic) DO UPDATE SET
    first_at_ms = CASE WHEN excluded.first_at_ms < topics.first_at_ms
        THEN excluded.first_at_ms ELSE topics.first_at_ms END,
    last_at_ms = CASE WHEN excluded.last_at_ms > topics.last_at_ms
        THEN excluded.last_at_ms ELSE topics.last_at_ms END,
    messages = topics.messages + excluded.messages"""

MESSAGE_ROWS_PER_INSERT = 500  # 3 parameters each: well under SQLite's limit
EMAIL_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """What an `accepted` event adds to its message, from the content hash."""

    subject: str = ""
    lane: str = ""
    scheduled_at_ms: int | None = None


async def write_batch(
    tx: Session, batch: ArchiveBatch, meta: dict[str, MessageMeta] | None = None
) -> None:
    """Everything `batch` holds, inside the caller's transaction."""
    meta = meta or {}
    if batch.need_email:
        await fill_missing_emails(tx, batch)
    if batch.events:
        await insert_rows(tx, INSERT_EVENTS, INSERT_EVENTS_UNNEST, batch.events)
    new_per_topic = await insert_messages(tx, batch)
    if batch.accepted:
        await tx.executemany(
            UPDATE_ACCEPTED,
            [
                (
                    a.msg_id,
                    a.topic,
                    meta.get(a.msg_id, MessageMeta()).subject,
                    meta.get(a.msg_id, MessageMeta()).lane,
                    a.total,
                    meta.get(a.msg_id, MessageMeta()).scheduled_at_ms,
                )
                for a in batch.accepted
            ],
        )
    if batch.recipients:
        rows = [recipient_args(r) for r in _sorted(batch)]
        await insert_rows(tx, UPSERT_RECIPIENTS, UPSERT_RECIPIENTS_UNNEST, rows)
    if batch.topics:
        await tx.executemany(
            UPSERT_TOPICS,
            [
                (topic, first, last, new_per_topic.get(topic, 0))
                for topic, (first, last) in sorted(batch.topics.items())
            ],
        )


async def insert_rows(
    tx: Session, row_by_row: str, by_columns: str, rows: Sequence[Sequence[Any]]
) -> None:
    if tx.dialect == "postgres":
        await tx.execute(by_columns, *(list(column) for column in zip(*rows, strict=True)))
    else:
        await tx.executemany(row_by_row, rows)


def _sorted(batch: ArchiveBatch) -> list[RecipientRow]:
    # One lock order for every writer (Postgres: no deadlock between two archive replicas).
    return [batch.recipients[key] for key in sorted(batch.recipients)]


def recipient_args(r: RecipientRow) -> tuple[Any, ...]:
    return (
        r.msg_id,
        r.idx,
        r.email,
        r.state,
        r.state_rank,
        r.state_at_ms,
        r.ses_id,
        r.last_event,
        r.last_event_rank,
        r.last_event_at_ms,
        r.sent_at_ms,
        r.updated_at_ms,
    )


async def insert_messages(tx: Session, batch: ArchiveBatch) -> Counter[str]:
    """Insert the batch's messages not stored yet; the number of new ones per topic."""
    new: Counter[str] = Counter()
    ids = sorted(batch.messages)
    for start in range(0, len(ids), MESSAGE_ROWS_PER_INSERT):
        chunk = ids[start : start + MESSAGE_ROWS_PER_INSERT]
        args: list[Any] = []
        for msg_id in chunk:
            args += [msg_id, batch.messages[msg_id].topic, batch.accepted_at(msg_id)]
        values = ", ".join(f"(${3 * k + 1}, ${3 * k + 2}, ${3 * k + 3})" for k in range(len(chunk)))
        rows = await tx.fetch(
            f"INSERT INTO messages (msg_id, topic, accepted_at_ms) VALUES {values} "
            "ON CONFLICT (msg_id) DO NOTHING RETURNING topic",
            *args,
        )
        new.update(row["topic"] for row in rows if row["topic"])
    return new


async def fill_missing_emails(tx: Session, batch: ArchiveBatch) -> None:
    """Events that name a recipient without its address (a pixel open) get the address the
    recipient row holds, so an address's timeline finds them."""
    missing = batch.missing_emails()
    by_message: dict[str, list[int]] = {}
    for msg_id, idx in sorted(missing):
        by_message.setdefault(msg_id, []).append(idx)
    emails: dict[tuple[str, int], str] = {}
    for msg_id, indexes in by_message.items():
        for start in range(0, len(indexes), EMAIL_LOOKUP_CHUNK):
            chunk: Sequence[int] = indexes[start : start + EMAIL_LOOKUP_CHUNK]
            marks = ", ".join(f"${k + 2}" for k in range(len(chunk)))
            rows = await tx.fetch(
                f"SELECT idx, email FROM recipients WHERE msg_id = $1 AND idx IN ({marks})",
                msg_id,
                *chunk,
            )
            emails.update({(msg_id, row["idx"]): row["email"] for row in rows})
    known = {key: r.email for key, r in batch.recipients.items() if r.email}
    batch.fill_emails(known | emails)

"""Helpers of the ingest tests: read what the dispatcher wrote."""

from __future__ import annotations

from typing import Any

from sesflow.common import scripts
from sesflow.common.keys import DISPATCH_GROUP, SENDERS_GROUP, PartitionKeys
from sesflow.common.schema import Event, decode_event


async def read_events(client: Any, p: PartitionKeys) -> list[Event]:
    return [decode_event(fields["e"]) for _, fields in await client.xrange(p.events)]


async def pump_backlogs(client: Any, p: PartitionKeys) -> int:
    """Move every bulk backlog of `p` to `sends` (a sender's pump does it a little at a time)."""
    pump = scripts.register(client, "pump")
    moved = 0
    while True:
        reply = await pump(
            keys=p.pump_keys(),
            args=[SENDERS_GROUP, 1_000_000, 1000, f"{p.prefix}backlog:", 1, 5000],
        )
        if not int(reply[0]):
            return moved
        moved += int(reply[0])


async def queued(client: Any, p: PartitionKeys) -> int:
    """Jobs queued in `p` (on `sends` or in a bulk backlog), once pumped to `sends`."""
    await pump_backlogs(client, p)
    return int(await client.xlen(p.sends))


async def read_jobs(client: Any, p: PartitionKeys) -> list[dict[str, str]]:
    """The jobs on `sends`, once the bulk backlogs are pumped there."""
    await pump_backlogs(client, p)
    return [fields for _, fields in await client.xrange(p.sends)]


async def dispatch_all(dispatcher: Any) -> int:
    """Handle every entry waiting on `requests` as the dispatcher's loop would; how many."""
    reply = await dispatcher.client.xreadgroup(
        DISPATCH_GROUP, "test", {dispatcher.keys.requests: ">"}, count=100
    )
    entries = [entry for _stream, batch in reply or [] for entry in batch]
    for entry_id, fields in entries:
        await dispatcher.handle(entry_id, fields)
    return len(entries)

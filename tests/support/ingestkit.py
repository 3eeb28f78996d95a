"""Helpers of the ingest tests: read what the dispatcher wrote."""

from __future__ import annotations

from typing import Any

from sesflow.common.keys import DISPATCH_GROUP, PartitionKeys
from sesflow.common.schema import Event, decode_event


async def read_events(client: Any, p: PartitionKeys) -> list[Event]:
    return [decode_event(fields["e"]) for _, fields in await client.xrange(p.events)]


async def read_jobs(client: Any, p: PartitionKeys) -> list[dict[str, str]]:
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

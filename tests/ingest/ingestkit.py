"""Helpers of the ingest tests: read what the dispatcher wrote."""

from __future__ import annotations

from typing import Any

from common.keys import PartitionKeys
from common.schema import Event, decode_event


async def read_events(client: Any, p: PartitionKeys) -> list[Event]:
    return [decode_event(fields["e"]) for _, fields in await client.xrange(p.events)]


async def read_jobs(client: Any, p: PartitionKeys) -> list[dict[str, str]]:
    return [fields for _, fields in await client.xrange(p.sends)]

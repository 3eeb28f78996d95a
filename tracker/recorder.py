"""Writes the tracker's events: one script call per batch, into one partition's `events` stream.

First touches (unique opens, clicks, unsubscribes) live in the message's hash `opens:<msg_id>`,
one field per recipient and kind: `<index>` for opens (the key's original meaning), `c:<index>`
for clicks, `u:<index>` for unsubscribes. The script decides `unique` and appends the event in
the same atomic step, so a crash can neither lose the first open nor count it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from sesflow.common import schema
from sesflow.common.connection import Redis, redis_errors
from sesflow.common.keys import PartitionKeys
from sesflow.common.scripts import register

SCRIPT = "record_events"
DUPLICATE = -1

# How long first touches are remembered. Opens come in long after the content has expired, so
# this is deliberately longer than CONTENT_TTL; after it, a recipient's next open counts as unique
# again (a tolerable error, against an unbounded number of hashes).
MIN_FIRST_TOUCH_TTL = 90 * 24 * 3600


class FirstTouch(msgspec.Struct, frozen=True):
    """How an event takes part in first-touch logic."""

    field: str  # field in `opens:<msg_id>`
    emit_again: bool  # False: only the first one is recorded at all (unsubscribe)


def first_open(index: int) -> FirstTouch:
    return FirstTouch(str(index), emit_again=True)


def first_click(index: int) -> FirstTouch:
    return FirstTouch(f"c:{index}", emit_again=True)


def first_unsubscribe(index: int) -> FirstTouch:
    return FirstTouch(f"u:{index}", emit_again=False)


@dataclass(frozen=True, slots=True)
class Pending:
    """One event to record, with its first-touch rule (None: always recorded as is)."""

    event: schema.Event
    touch: FirstTouch | None = None


class EventRecorder:
    def __init__(self, client: Redis, first_touch_ttl: int) -> None:
        self._script = register(client, SCRIPT)
        self._first_touch_ttl = max(first_touch_ttl, MIN_FIRST_TOUCH_TTL)

    async def record(
        self,
        part: PartitionKeys,
        msg_id: str,
        items: list[Pending],
        dedupe_id: str = "",
        dedupe_ttl: int = 86400,
    ) -> int:
        """Append `items` to `part.events`; -1 (DUPLICATE) when `dedupe_id` was seen already.

        All the keys share the partition's hash tag. Raises RedisUnavailable when Redis is down.
        """
        keys = [part.events, part.opens(msg_id or "-")]
        if dedupe_id:
            keys.append(part.sns_seen(dedupe_id))
        args: list[str | int | bytes] = [dedupe_ttl, self._first_touch_ttl, int(time.time() * 1000)]
        for item in items:
            if item.touch is None:
                args += ["", schema.encode(item.event), ""]
                continue
            first = msgspec.structs.replace(item.event, unique=True)
            again = msgspec.structs.replace(item.event, unique=False)
            args += [
                item.touch.field,
                schema.encode(first),
                schema.encode(again) if item.touch.emit_again else "",
            ]
        with redis_errors():
            return int(await self._script(keys=keys, args=args))

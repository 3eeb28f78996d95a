"""Writes the tracker's events: one script call per batch, into one partition's `events` stream.

First touches (unique opens, clicks, unsubscribes) are bits of the message's touch string
(`touch:<msg_id>`), four per recipient: bit 4*index + 0 open, + 1 click, + 2 unsubscribe, so a
message costs half a byte per recipient however many open. Older versions kept them as fields
of the hash `opens:<msg_id>` (`<index>`, `c:<index>`, `u:<index>`), still read until it expires.
The script decides `unique` and appends the event in the same atomic step, so a crash can
neither lose the first open nor count it twice.

SNS dedupe marks are fields of small per-partition hashes by day and digest bucket
(`common.day_buckets`); the script reads every day of the dedupe window, and the per-delivery
keys older versions wrote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from sesflow.common import schema
from sesflow.common.connection import Redis, redis_errors
from sesflow.common.day_buckets import day_of, days_to_read, expires_at, mark_of
from sesflow.common.keys import PartitionKeys
from sesflow.common.scripts import register

SCRIPT = "record_events"
DUPLICATE = -1

# How long first touches are remembered. Opens come in long after the content has expired, so
# this is deliberately longer than CONTENT_TTL; after it, a recipient's next open counts as unique
# again (a tolerable error, against an unbounded number of hashes).
MIN_FIRST_TOUCH_TTL = 90 * 24 * 3600


SNS_BUCKETS = 512  # dedupe hashes per partition and day: listpack-small to ~64k a day
TOUCH_BITS = 4  # bits per recipient in a touch string


class FirstTouch(msgspec.Struct, frozen=True):
    """How an event takes part in first-touch logic."""

    bit: int  # bit offset in `touch:<msg_id>`
    field: str  # the same touch's field in the older `opens:<msg_id>` hash
    emit_again: bool  # False: only the first one is recorded at all (unsubscribe)


def first_open(index: int) -> FirstTouch:
    return FirstTouch(TOUCH_BITS * index, str(index), emit_again=True)


def first_click(index: int) -> FirstTouch:
    return FirstTouch(TOUCH_BITS * index + 1, f"c:{index}", emit_again=True)


def first_unsubscribe(index: int) -> FirstTouch:
    return FirstTouch(TOUCH_BITS * index + 2, f"u:{index}", emit_again=False)


def dedupe_keys(
    part: PartitionKeys, dedupe_id: str, ttl: int, now: float
) -> tuple[bytes, list[str]]:
    """The field of a delivery's dedupe mark and the keys `record_events.lua` checks: the hashes
    of every day of the window (today's first, the one written), then the older per-delivery
    mark."""
    mark = mark_of(dedupe_id, SNS_BUCKETS)
    days = days_to_read(now, ttl)
    hashes = [part.sns_bucket(day, mark.bucket) for day in days]
    return mark.field, [*hashes, part.sns_seen(dedupe_id)]


@dataclass(frozen=True, slots=True)
class Pending:
    """One event to record, with its first-touch rule (None: always recorded as is)."""

    event: schema.Event
    touch: FirstTouch | None = None


class EventRecorder:
    def __init__(self, client: Redis, first_touch_ttl: int) -> None:
        self._client = client
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
        now = time.time()
        keys = [part.events, part.touches(msg_id or "-"), part.opens(msg_id or "-")]
        field, hashes = b"", 0
        if dedupe_id:
            field, dedupe = dedupe_keys(part, dedupe_id, dedupe_ttl, now)
            keys += dedupe
            hashes = len(dedupe) - 1
        at = expires_at(day_of(now), dedupe_ttl)
        args: list[str | int | bytes] = [field, at, self._first_touch_ttl, hashes]
        for item in items:
            if item.touch is None:
                args += ["", "", schema.encode(item.event), ""]
                continue
            first = msgspec.structs.replace(item.event, unique=True)
            again = msgspec.structs.replace(item.event, unique=False)
            args += [
                item.touch.bit,
                item.touch.field,
                schema.encode(first),
                schema.encode(again) if item.touch.emit_again else "",
            ]
        with redis_errors():
            return int(await self._script(keys=keys, args=args))

    async def seen(self, part: PartitionKeys, dedupe_id: str, dedupe_ttl: int) -> bool:
        """Whether the delivery `dedupe_id` was recorded into `part` within `dedupe_ttl`."""
        field, keys = dedupe_keys(part, dedupe_id, dedupe_ttl, time.time())
        with redis_errors():
            pipe = self._client.pipeline(transaction=False)
            for key in keys[:-1]:
                pipe.hexists(key, field)
            pipe.exists(keys[-1])
            return any(await pipe.execute())

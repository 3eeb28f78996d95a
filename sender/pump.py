"""The pump: hands each partition's senders a fraction of a second of mail at a time, from the
backlogs (`pump.lua`, which holds the fair share and the transactional cap).

Every sender replica runs one; each call is one atomic script that adds only what is missing,
so any number of pumps keep the same depth. A reader's read is such a call too (`Pump.read`):
the script reads for it after the top-up, which saves the read its own round trip and, while
mail flows, the pump loop every call of its own. The depth counts what is on `sends` and not yet
read plus what the live senders hold, so the replicas together never hold more than the target:
the rate's worth of AHEAD_S, plus the jobs on their way around (CYCLE_S) and in SES calls (the
rate times the mean SES call time this replica measures). Deep enough that a sender never waits
on the pump, shallow enough that a transactional job waits about AHEAD_S behind bulk mail, and
that a pause or a new topic takes effect within that much mail.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from sesflow.common import scripts
from sesflow.common.connection import UNAVAILABLE, Redis
from sesflow.common.consumer import Entry, wait_at_most
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings
from sesflow.sender.metrics import SES_SECONDS
from sesflow.sender.rate_limit import HEADROOM, grid_step

log = get_logger(__name__)

# Measured with tests/bench/run.py --only rate and --only sharing: 30 ms waiting, a grid step and
# 150 ms on the way keep 4 replicas at 200/s within 1% of the rate (198.6-199.0/s).
AHEAD_S = 0.03
# A job's way around besides its grid step and the SES call: the pump's own interval, a
# reader's linger for a fuller read, the record and its acknowledgement.
CYCLE_S = 0.15
MIN_DEPTH = 16
MAX_DEPTH = 2000
QUANTUM = 10  # bulk jobs taken from one topic per turn: topics interleave finely
LIVE_MS = 5000  # a consumer silent this long is no live sender: its jobs wait for reclaim
# Transactional jobs may skip the pump (dispatch.lua) at the transactional share of the rate,
# this many seconds of it at once: they then wait for a grid point, not for room behind bulk.
DIRECT_BURST_S = 0.25
# While the senders hold all they should, room comes as their grid points' records free it: a
# call every 100 ms (about the grid's step) tops them up, rather than five calls a point that
# mostly find no room. While mail moves and room is left in a partition (its senders keep up
# with what arrives), a new message should start soon: 20 ms. Nothing to move: 50 ms.
BUSY_INTERVAL_S = 0.1
BRISK_INTERVAL_S = 0.02
IDLE_INTERVAL_S = 0.05
OUTAGE_INTERVAL_S = 1.0
LATENCY_INTERVAL_S = 1.0  # how often the SES call time is read again
DEFAULT_LATENCY_S = 0.1  # until this replica has timed its own calls


def target_depth(settings: Settings, latency_s: float = DEFAULT_LATENCY_S) -> int:
    """Jobs handed to a partition's senders at a time: AHEAD_S of its rate waiting for a slot,
    one step of the send grid (a job waits for its point), a job's way around (CYCLE_S) and
    its SES call (`latency_s`)."""
    per_partition = settings.email_rate / max(1, settings.send_partitions)
    step = grid_step(1 / (settings.email_rate * HEADROOM))
    held_s = AHEAD_S + step + CYCLE_S + latency_s
    return max(MIN_DEPTH, min(MAX_DEPTH, math.ceil(per_partition * held_s)))


class SesLatency:
    """The mean SES call time of this process over the last few seconds, from the histogram
    the sender already keeps (a smoothed ratio of the growth of its sum and count)."""

    def __init__(self) -> None:
        self.value = DEFAULT_LATENCY_S
        self.last = (0.0, 0.0)
        self.read_at = 0.0

    def read(self) -> float:
        now = time.monotonic()
        if now - self.read_at >= LATENCY_INTERVAL_S:
            self.read_at = now
            total, count = _sum_and_count()
            spent, calls = total - self.last[0], count - self.last[1]
            if calls > 0:
                self.value = 0.5 * self.value + 0.5 * spent / calls
            self.last = (total, count)
        return self.value


def _sum_and_count() -> tuple[float, float]:
    total = count = 0.0
    for metric in SES_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


def flat_entries(flat: list[Any], start: int) -> list[Entry]:
    """The entries of pump.lua's flat reply from `start` on: ID, length, names and values."""
    entries: list[Entry] = []
    at, end = start, len(flat)
    while at < end:
        entry_id, length = flat[at], int(flat[at + 1])
        at += 2
        entries.append(
            (
                entry_id,
                dict(zip(flat[at : at + length : 2], flat[at + 1 : at + length : 2], strict=True)),
            )
        )
        at += length
    return entries


def interval_of(moved: int, room: int) -> float:
    """How long before a partition's next top-up, from what its last one did: brisk while mail
    moves and room is left, busy while mail moves or its senders hold all they should, idle
    when there is nothing to move."""
    if moved > 0 and room > 0:
        return BRISK_INTERVAL_S
    return BUSY_INTERVAL_S if moved or room <= 0 else IDLE_INTERVAL_S


class Pump:
    """Tops the partitions up: from its own loop, and for a sender's reader as part of its read
    (`read`), which pushes the loop's next call for that partition back. While the readers
    read, as they do while mail flows, the loop makes no call and no timer of its own fires."""

    def __init__(self, settings: Settings, client: Redis, keys: Keys) -> None:
        self.settings = settings
        self.client = client
        self.keys = keys
        self.share = settings.transactional_max_share
        self.latency = SesLatency()
        self.script = scripts.register(client, "pump")
        per_partition = settings.email_rate / max(1, settings.send_partitions)
        self.direct_rate = self.share * per_partition * HEADROOM
        self.direct_burst = max(1, math.ceil(self.direct_rate * DIRECT_BURST_S))
        # when the loop tops each partition up next (monotonic), an interval after its last
        # top-up (by the loop or a read)
        self.due = {p.index: 0.0 for p in keys.partitions}
        self.interval = {p.index: 0.0 for p in keys.partitions}
        self.moved_on = asyncio.Event()  # some partition's time moved (or `stop`)

    async def top_up(self, parts: list[PartitionKeys] | None = None) -> int:
        """Top up every partition (or `parts`) once; the jobs moved. Each partition's next
        call by the loop is then an interval away (`interval_of`)."""
        moved = 0
        for p in self.keys.partitions if parts is None else parts:
            moved += int((await self._call(p))[0])
        return moved

    def read_tops_up(self, part: PartitionKeys) -> bool:
        """Whether a read now should top `part` up too: half its interval has passed since its
        last top-up. A reader that reads more often (unthrottled, a read every few ms) then
        tops up about as often as the loop would, not at every read: each call counts the
        undelivered entries, up to the whole depth."""
        return time.monotonic() >= self.due[part.index] - self.interval[part.index] / 2

    async def read(self, part: PartitionKeys, consumer: str, count: int) -> list[Entry]:
        """Top `part` up and read up to `count` of its new entries for `consumer`, in one script
        call: the read costs no round trip of its own, and when it moved mail the loop waits a
        whole interval again before it tops `part` up itself."""
        return flat_entries(await self._call(part, consumer, count), 3)

    async def _call(self, part: PartitionKeys, *read: str | int) -> list[Any]:
        target = target_depth(self.settings, self.latency.read())
        reply: list[Any] = await self.script(
            keys=part.pump_keys(),
            args=[
                *(SENDERS_GROUP, target, QUANTUM, f"{part.prefix}backlog:", self.share, LIVE_MS),
                *(repr(self.direct_rate), self.direct_burst, *read),
            ],
        )
        moved, room = int(reply[0]), int(reply[2])
        # A read that moved nothing leaves the loop's schedule as it was: while mail trickles in
        # (a reader reads after each job), its empty top-ups would otherwise keep putting the
        # loop's next call an idle interval away, and a new job would wait for it.
        if moved or not read:
            self.put_off(interval_of(moved, room), part)
        return reply

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: self.moved_on.set())
        try:
            while not stop.is_set():
                now = time.monotonic()
                due = [p for p in self.keys.partitions if self.due[p.index] <= now]
                try:
                    if due:
                        await self.top_up(due)
                except UNAVAILABLE:
                    self.put_off(OUTAGE_INTERVAL_S)  # the sender's loops report the outage
                except Exception:  # a bug must not stop the pump for good: log, go on
                    log.exception("pump failed")
                    self.put_off(OUTAGE_INTERVAL_S)
                await self.until_due(stop)
        finally:
            stopping.cancel()

    def put_off(self, seconds: float, part: PartitionKeys | None = None) -> None:
        """The loop's next top-up of `part` (of every partition) `seconds` from now; its wait
        starts over (the task resumes in the same turn of the event loop: no timer fires)."""
        for index in self.due if part is None else [part.index]:
            self.interval[index] = seconds
            self.due[index] = time.monotonic() + seconds
        self.moved_on.set()

    async def until_due(self, stop: asyncio.Event) -> None:
        """Until some partition is due, its time moved on by every read meanwhile (or `stop`)."""
        while not stop.is_set():
            self.moved_on.clear()
            wait = min(self.due.values()) - time.monotonic()
            if wait <= 0 or not await wait_at_most(self.moved_on, wait):
                return

"""The send rate shared by every sender replica: one GCRA schedule in Redis (`rate_limiter.lua`).

- One token = one recipient, EMAIL_RATE per second cluster-wide (scheduled `HEADROOM` under it),
  EMAIL_BURST at once.
- A grant may be a short *reservation*: the script books the next slots at most `MAX_RESERVE_MS`
  ahead and the caller sleeps until its slot. Booking further ahead would let many replicas with
  many waiting jobs fill the schedule for seconds, so beyond that the script only says when to
  ask again. One poller per process books a slot for every job waiting in it in one call, and
  the slots of one `GATHER_S` step of the process's grid go together (one claim, one SES call
  for the jobs of a message, one record), never before their slot.
- **Late slots are dropped, never bunched.** A job that wakes up (or gets to its SES call) more
  than `LATE_S` after its grid point (the process was not scheduled, Redis was slow) does not
  send on that slot: it asks for a new one. Sends are then never later than slot + `GATHER_S` +
  `LATE_S`, so any 1-second window holds at most rate x HEADROOM x 1.05 + burst, under
  EMAIL_RATE + 5% (+ burst). A dropped slot is wasted (the schedule is shared in Redis; others
  have booked after it), which costs a little of the mean rate but never bursts. This holds for
  *reservations* (slots in the future: the schedule is full, the cluster sends at the rate). A
  slot free at once (burst credit, or the cluster sends below the rate) tolerates
  `IMMEDIATE_LATE_S`: otherwise an unthrottled sender that is merely busy (its claims queue for
  a few ms) would drop slots and pay a release and a new claim for nothing. The price: jobs
  stalled on such slots may go together, at most the slots that were free at once (burst, or
  what the cluster left unused).
- AIMD: a throttle report (HTTP 429 / Throttling) multiplies the rate by `DECREASE`, at most once
  per `COOLDOWN_MS` for the whole cluster (one SES answer wave is one congestion signal, not 64),
  never below `FLOOR` of EMAIL_RATE; it then recovers by `RECOVERY` of the rate per second.
- The rate is also capped by SES's MaxSendRate when the upkeep task has read it (`set_ceiling`).
- `pause()` stops every replica until a time (account paused, daily quota exhausted).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sesflow.common.consumer import sleep_or_stop
from sesflow.common.keys import Keys
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.sender import metrics

# The schedule runs this much under EMAIL_RATE (and SES's MaxSendRate). A job more than LATE_S
# past its grid point drops its slot (a tighter LATE_S drops more slots under load; 5 ms lost
# 10% of the mean rate on a loaded 2-core host, 20 ms about 3%).
HEADROOM = 0.995
LATE_S = 0.02
IMMEDIATE_LATE_S = 1.0
DECREASE = 0.7
COOLDOWN_MS = 1000
FLOOR = 0.05
RECOVERY = 0.2
MAX_RESERVE_MS = 500
# Reserved slots are sent on a grid of this step: the jobs whose slots fall in one step wake
# together and go out in one claim, one SES call and one record, instead of one wake-up and one
# call each. A send is then at most GATHER_S + LATE_S after its slot, so a 1-s window holds at
# most 0.995 x 1.05 x rate + burst < 1.045 x rate + burst: 30 ms is as long as the +5% bound
# allows with a margin (15 recipients per call at 500/s; 20 ms gave 10). A window straddles
# (1 + step + lateness) s of slots however the step is placed, so a step long enough for a full
# 50-entry call at 500/s (100 ms) would let a window hold ~10% over the rate. The step is never
# longer than GATHER_SLOTS slots (a full bulk call): at high rates slots are dense and go at once.
GATHER_S = 0.03
GATHER_SLOTS = 50
# Slots closer than this (rates above 10,000/s, "unthrottled") are held to IMMEDIATE_LATE_S:
# being a few ms late there is a fraction of a slot's worth of nothing, and dropping the slot
# would cost a release and a new claim per job of a busy replica.
DENSE_INTERVAL_S = 0.0001
# Waiting jobs ask again at least this often, so that a lifted pause or a recovered rate is
# noticed soon; jitter spreads the replicas' polls.
MAX_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Grant:
    """One booked slot: send at `at` (time.monotonic()), and not later than `at + tolerance`."""

    at: float
    tolerance: float

    def late(self) -> bool:
        return time.monotonic() - self.at > self.tolerance


class Want:
    """Slots one caller waits for: one job (`acquire`) or a whole read batch (`SlotBatch`).
    The poller hands each grid point's grants to `hand` at that point."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def done(self) -> bool:
        raise NotImplementedError

    def hand(self, grants: list[Grant]) -> None:
        raise NotImplementedError

    def end(self, exc: BaseException | None) -> None:
        """No more grants: None = stop was set; else the error that ended the poller."""
        raise NotImplementedError


class _OneSlot(Want):
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Grant | None]) -> None:
        super().__init__(1)
        self.future = future

    def done(self) -> bool:
        return self.future.done()  # its job was cancelled meanwhile

    def hand(self, grants: list[Grant]) -> None:
        self.future.set_result(grants[0])

    def end(self, exc: BaseException | None) -> None:
        if exc is None:
            self.future.set_result(None)
        elif isinstance(exc, Exception):
            self.future.set_exception(exc)
        else:
            self.future.cancel()


class SlotBatch(Want):
    """Slots for the jobs of one read batch: each grid point's grants go to `hand` at that
    point, in one call for all of the batch's jobs due then (so a batch wakes once per point,
    not once per job). `finished()` waits until every slot was handed: True, or False when stop
    came first; it raises the error that ended the poller."""

    __slots__ = ("_finished", "_hand", "_unhanded", "closed")

    def __init__(self, count: int, hand: Callable[[list[Grant]], None]) -> None:
        super().__init__(count)
        self._hand = hand
        self._unhanded = count
        self._finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed = False

    def done(self) -> bool:
        return self.closed

    def close(self) -> None:
        """The batch no longer wants slots (it ended or was cancelled)."""
        self.closed = True

    def hand(self, grants: list[Grant]) -> None:
        self._unhanded -= len(grants)
        self._hand(grants)
        if self._unhanded <= 0 and not self._finished.done():
            self._finished.set_result(True)

    def end(self, exc: BaseException | None) -> None:
        if self._finished.done():
            return
        if exc is None:
            self._finished.set_result(False)
        elif isinstance(exc, Exception):
            self._finished.set_exception(exc)
        else:
            self._finished.cancel()

    async def finished(self) -> bool:
        return await self._finished


def _hand_out(grants: list[tuple[Want, list[Grant]]]) -> None:
    for want, given in grants:
        if not want.done():
            want.hand(given)


@dataclass(frozen=True, slots=True)
class BucketStatus:
    tokens: float  # tokens available now (0 while paused)
    rate: float  # effective rate per second after AIMD and the SES ceiling
    factor: float  # AIMD factor, 1.0 = full rate
    paused_s: float  # seconds left in a cluster-wide pause


class RateLimiter:
    def __init__(self, client: Any, settings: Settings, keys: Keys) -> None:
        self.key = keys.rate
        self.rate = settings.email_rate * HEADROOM
        self.burst = max(1.0, settings.email_burst)
        self._script = register(client, "rate_limiter")
        self._waiters: deque[Want] = deque()
        # Each process has its own phase on the gather grid: replicas on one host would
        # otherwise all wake at the same instants and stall each other (then drop their slots).
        self._phase = random.uniform(0.0, GATHER_S)
        self._poller: asyncio.Task[None] | None = None

    async def _call(self, mode: str, *extra: Any, now_ms: float | None = None) -> Any:
        now = "" if now_ms is None else repr(float(now_ms))
        args = [mode, now, self.rate, self.burst, FLOOR, RECOVERY, *extra]
        reply: Any = await self._script(keys=[self.key], args=args)
        return reply

    async def grant(self, tokens: int, *, now_ms: float | None = None) -> list[Any]:
        """One attempt at up to `tokens` slots: the script's reply (see rate_limiter.lua)."""
        reply: list[Any] = await self._call("acquire", tokens, MAX_RESERVE_MS, now_ms=now_ms)
        return reply

    async def try_acquire(
        self, tokens: int = 1, *, now_ms: float | None = None
    ) -> tuple[bool, float]:
        """One attempt at one slot: (granted, seconds). Granted: send after `seconds` (a
        reservation). Not granted: ask again after `seconds`."""
        reply = await self.grant(tokens, now_ms=now_ms)
        if int(reply[0]) < 1:
            return False, int(reply[1]) / 1000.0
        return True, math.ceil(max(0.0, float(reply[1]))) / 1000.0

    async def acquire(self, stop: asyncio.Event | None = None) -> Grant | None:
        """Wait for a slot and until its time; None when `stop` was set before a grant.

        The jobs of this process queue for slots and one poller asks Redis for as many slots as
        jobs are waiting (64 waiting jobs cost one call, not 64), handing them out in order. A
        slot this job wakes up too late for is dropped and another one booked (module doc)."""
        while True:
            waiter: asyncio.Future[Grant | None] = asyncio.get_running_loop().create_future()
            self.want(_OneSlot(waiter), stop)
            grant = await waiter
            if grant is None:
                return None
            delay = grant.at - time.monotonic()
            if delay > 0:  # handed out a little early (timer resolution): wait for the slot
                await asyncio.sleep(delay)
            if not grant.late():
                return grant
            metrics.JOBS.labels("late_slot").inc()

    def want(self, want: Want, stop: asyncio.Event | None = None) -> None:
        """Queue `want` for slots; the poller books them for every waiting caller at once."""
        self._waiters.append(want)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(stop), name="rate-poller")

    async def _poll(self, stop: asyncio.Event | None) -> None:
        try:
            while self._has_waiters():
                if stop is not None and stop.is_set():
                    self._end_waiters()
                    return
                asked = time.monotonic()
                reply = await self.grant(sum(w.left for w in self._waiters))
                count = int(reply[0])
                if count > 0:
                    self._book(count, float(reply[1]) / 1000, float(reply[2]) / 1000, asked)
                    continue
                delay = min(int(reply[1]) / 1000, MAX_POLL_S) * random.uniform(0.8, 1.2)
                if stop is None:
                    await asyncio.sleep(delay)
                    continue
                await sleep_or_stop(stop, delay)
        except Exception as exc:
            # the waiting jobs see the failure (Redis unavailable) and handle it themselves
            self._fail_waiters(exc)
        except BaseException:
            self._fail_waiters(None)
            raise
        finally:
            self._poller = None

    def _has_waiters(self) -> bool:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()  # its job was cancelled
        return bool(self._waiters)

    def _end_waiters(self) -> None:
        """Stop: every waiting caller gets no slot (None)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.end(None)

    def _book(self, count: int, first: float, interval: float, asked: float) -> None:
        """Hand `count` slots, the first `first` seconds after `asked` and then one every
        `interval`, to the waiting callers in order.

        The jobs of one grid point are woken by one timer, at their slot: one wake-up per job
        (or per read batch), not a grant now and a sleep until the slot. Slots free at once are
        handed out by a timer too (at `asked`, already past): at a dense rate the slots just
        after them are on grid points only nanoseconds later, and every timer that is due wakes
        in the same loop turn, so a read batch's jobs stay one group (one bulk call), not the
        first alone."""
        step = min(GATHER_S, GATHER_SLOTS * interval)
        reserved = LATE_S if interval >= DENSE_INTERVAL_S else IMMEDIATE_LATE_S
        due: dict[float, dict[Want, list[Grant]]] = {}
        grants_at: dict[float, Grant] = {}
        slot = 0
        while slot < count and self._waiters:
            waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            # timed from when we asked: never later than Redis's own `now`
            ahead = first + slot * interval
            if ahead > 0:
                at, tolerance = self._gathered(asked + ahead, step), reserved
            else:
                at, tolerance = asked, IMMEDIATE_LATE_S
            if at not in due:
                due[at] = {}
                grants_at[at] = Grant(at, tolerance)  # one per grid point, shared
            due[at].setdefault(waiter, []).append(grants_at[at])
            waiter.left -= 1
            if waiter.left <= 0:
                self._waiters.popleft()
            slot += 1
        loop = asyncio.get_running_loop()
        for at, grants in due.items():
            loop.call_at(at, _hand_out, list(grants.items()))

    def _gathered(self, slot: float, step: float) -> float:
        """The first point of this process's grid of `step` at or after `slot`."""
        phase = self._phase % step
        return math.ceil((slot - phase) / step) * step + phase

    def _fail_waiters(self, exc: Exception | None) -> None:
        """The waiting callers see the failure (or, None: a cancellation) themselves."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.end(asyncio.CancelledError() if exc is None else exc)

    async def throttled(self, *, now_ms: float | None = None) -> float:
        """Report SES throttling; returns the AIMD factor now in force."""
        return float(await self._call("throttle", DECREASE, COOLDOWN_MS, now_ms=now_ms))

    async def pause(self, seconds: float, *, now_ms: float | None = None) -> float:
        """Pause every replica for `seconds` (extends a longer pause, never shortens it)."""
        return float(await self._call("pause", int(seconds * 1000), now_ms=now_ms))

    async def set_ceiling(
        self, max_send_rate: float, valid_s: float, *, now_ms: float | None = None
    ) -> None:
        """SES MaxSendRate (0 forgets it); the rate used is min(EMAIL_RATE, this)."""
        ceiling = max_send_rate * HEADROOM
        await self._call("quota", ceiling, int(valid_s * 1000), now_ms=now_ms)

    async def status(self, *, now_ms: float | None = None) -> BucketStatus:
        tokens, rate, factor, paused = await self._call("status", now_ms=now_ms)
        return BucketStatus(
            tokens=float(tokens),
            rate=float(rate),
            factor=float(factor),
            paused_s=float(paused) / 1000.0,
        )

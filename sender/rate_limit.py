"""The send rate shared by every sender replica: one GCRA schedule in Redis (`rate_limiter.lua`).

- One token = one recipient, EMAIL_RATE per second cluster-wide (scheduled `HEADROOM` under it),
  EMAIL_BURST at once.
- A grant may be a short *reservation*: the script books the next slots at most `MAX_RESERVE_MS`
  ahead and the caller sleeps until its slot. Booking further ahead would let many replicas with
  many waiting jobs fill the schedule for seconds, so beyond that the script only says when to
  ask again. One poller per process books a slot for every job waiting in it in one call.
- **One grid for every replica.** Reserved slots go out on a grid of step P laid on Redis's
  clock, the same for every replica: the slots of one step go together (one claim, one SES call
  for the jobs of a message, one record), never before their slot.
- **Late slots are dropped, never bunched.** A job that wakes up (or gets to its SES call) more
  than `LATE_S` after its grid point (the process was not scheduled, Redis was slow) does not
  send on that slot: it asks for a new one. So every send is made within `LATE_S` after a grid
  point, with the slots of the step before it. A 1-second window then holds the sends of the
  grid points in a span of 1 + LATE_S seconds: at most (1 + LATE_S) / P of them, each with P
  seconds of the rate. P is (1 + LATE_S) / k for a whole k, so that is (1 + LATE_S) x rate x
  HEADROOM + burst, under EMAIL_RATE + 1.5% (+ burst), for any number of replicas and any step.
  A dropped slot is wasted (the schedule is shared in Redis; others have booked after it),
  which costs a little of the mean rate but never bursts. This holds for *reservations* (slots
  in the future: the schedule is full, the cluster sends at the rate). A slot free at once
  (burst credit, or the cluster sends below the rate) tolerates `IMMEDIATE_LATE_S`: otherwise an
  unthrottled sender that is merely busy (its claims queue for a few ms) would drop slots and
  pay a release and a new claim for nothing. The price: jobs stalled on such slots may go
  together, at most the slots that were free at once (burst, or what the cluster left unused).
- **Transactional mail first.** Booked slots are given out when their grid point comes, to the
  urgent wants first (transactional jobs), then to the others in order: a transactional job
  waits for the next grid point, not behind the bulk mail its process booked before it. A
  process with no slot of its own that soon (other replicas booked the schedule ahead)
  *borrows* one: allowed at once, it pushes the shared schedule one slot later, so the mean
  rate is kept and a window holds at most the borrows made in it more. Borrows have a budget of
  their own, `BORROW_SHARE` of the rate per second: a window then holds at most rate x
  (HEADROOM x (1 + LATE_S) + BORROW_SHARE) + 1 + burst, under EMAIL_RATE + 3% (+ burst).
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

import msgspec

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
# Reserved slots are sent on a grid of this step at most: the jobs whose slots fall in one step
# wake together and go out in one claim, one SES call and one record, instead of one wake-up and
# one call each. The step is never longer than GATHER_SLOTS slots (a full bulk call: at high
# rates slots are dense and go at once), and is (1 + LATE_S) / k for a whole k (`grid_step`): at
# 500/s, 78.5 ms (39 recipients per call). A step and its lateness stay within 100 ms: one
# point's call is then never more than a tenth of a second of the rate, even right after a late
# point, which the strictest SES throttling we model (a token bucket of 0.1 s, the test stub's)
# accepts. At 94 ms + 30 ms it answered 429 in 4 of 8 runs of the rate bench.
GATHER_MAX_S = 0.08
GATHER_SLOTS = 50
# Urgent slots borrowed ahead of a full schedule: this share of the rate per second, one at a
# time (module doc: the window bound).
BORROW_SHARE = 0.015
# Slots closer than this (rates above 10,000/s, "unthrottled") are held to IMMEDIATE_LATE_S:
# being a few ms late there is a fraction of a slot's worth of nothing, and dropping the slot
# would cost a release and a new claim per job of a busy replica.
DENSE_INTERVAL_S = 0.0001
# Waiting jobs ask again at least this often, so that a lifted pause or a recovered rate is
# noticed soon; jitter spreads the replicas' polls.
MAX_POLL_S = 1.0


class Grant(msgspec.Struct, frozen=True, gc=False):
    """One booked slot: send at `at` (time.monotonic()), and not later than `at + tolerance`."""

    at: float
    tolerance: float

    def late(self) -> bool:
        return time.monotonic() - self.at > self.tolerance


class Want:
    """Slots one caller waits for: one job (`acquire`) or a whole read batch (`SlotBatch`).
    Each grid point's grants go to `hand` at that point; an urgent want is served first."""

    __slots__ = ("left", "urgent")

    def __init__(self, left: int, *, urgent: bool = False) -> None:
        self.left = left
        self.urgent = urgent

    def done(self) -> bool:
        raise NotImplementedError

    def hand(self, grants: list[Grant]) -> None:
        raise NotImplementedError

    def end(self, exc: BaseException | None) -> None:
        """No more grants: None = stop was set; else the error that ended the poller."""
        raise NotImplementedError


class _OneSlot(Want):
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Grant | None], urgent: bool) -> None:
        super().__init__(1, urgent=urgent)
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

    def __init__(
        self, count: int, hand: Callable[[list[Grant]], None], *, urgent: bool = False
    ) -> None:
        super().__init__(count, urgent=urgent)
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


def grid_step(interval_s: float) -> float:
    """The grid's step for slots `interval_s` apart: the longest (1 + LATE_S) / k, k whole, that
    is neither over GATHER_MAX_S nor over GATHER_SLOTS slots (module doc: the window bound)."""
    longest = min(GATHER_MAX_S, GATHER_SLOTS * interval_s)
    span = 1.0 + LATE_S
    return span / math.ceil(span / longest - 1e-9)


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
        self._urgent: deque[Want] = deque()
        # slots booked in Redis and not handed out yet, by the time of their grid point (whose
        # timer waits)
        self._points: dict[float, int] = {}
        self._step = grid_step(1 / self.rate)  # from the configured rate (`_book`)
        self._borrow_after = 0.0  # the borrowing budget is spent until then
        self._nudge: asyncio.Future[None] | None = None  # wakes the poller from a rest
        self._stop: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None

    async def _call(self, mode: str, *extra: Any, now_ms: float | None = None) -> Any:
        now = "" if now_ms is None else repr(float(now_ms))
        args = [mode, now, self.rate, self.burst, FLOOR, RECOVERY, *extra]
        reply: Any = await self._script(keys=[self.key], args=args)
        return reply

    async def grant(
        self, tokens: int, *, urgent: bool = False, now_ms: float | None = None
    ) -> list[Any]:
        """One attempt at up to `tokens` slots: the script's reply (see rate_limiter.lua)."""
        borrow = ("urgent", BORROW_SHARE, 1) if urgent else ()
        reply: list[Any] = await self._call(
            "acquire", tokens, MAX_RESERVE_MS, *borrow, now_ms=now_ms
        )
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

    async def acquire(
        self, stop: asyncio.Event | None = None, *, urgent: bool = False
    ) -> Grant | None:
        """Wait for a slot and until its time; None when `stop` was set before a grant.

        The jobs of this process queue for slots and one poller asks Redis for as many slots as
        jobs are waiting (64 waiting jobs cost one call, not 64), handing them out in order. A
        slot this job wakes up too late for is dropped and another one booked (module doc)."""
        while True:
            waiter: asyncio.Future[Grant | None] = asyncio.get_running_loop().create_future()
            self.want(_OneSlot(waiter, urgent), stop)
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
        (self._urgent if want.urgent else self._waiters).append(want)
        self._stop = stop
        if want.urgent and self._nudge is not None and not self._nudge.done():
            self._nudge.set_result(None)  # the poller rests: it may borrow a slot now
        self._poll_if_needed()

    def _poll_if_needed(self) -> None:
        if self._poller is None and self._needed() > 0:
            self._poller = asyncio.create_task(self._poll(), name="rate-poller")

    def _needed(self) -> int:
        """Slots wanted beyond those already booked."""
        return sum(w.left for w in self._live()) - self.booked

    @property
    def booked(self) -> int:
        """Slots booked in Redis and not handed out yet."""
        return sum(self._points.values())

    def _urgent_short(self) -> int:
        """Urgent slots wanted beyond those this process has booked within a grid step."""
        now = time.monotonic()
        if now < self._borrow_after or not self._urgent:
            return 0
        wanted = sum(w.left for w in self._urgent if not w.done())
        soon = now + self._step
        return wanted - sum(n for at, n in self._points.items() if at <= soon)

    def _live(self) -> list[Want]:
        """The waiting callers in the order they are served (dropping those that gave up)."""
        for queue in (self._urgent, self._waiters):
            while queue and queue[0].done():
                queue.popleft()  # its job was cancelled
        return [w for queue in (self._urgent, self._waiters) for w in queue if not w.done()]

    async def _poll(self) -> None:
        try:
            while (needed := self._needed()) > 0:
                stop = self._stop
                if stop is not None and stop.is_set():
                    self._end_waiters()
                    return
                if (short := self._urgent_short()) > 0:
                    reply = await self.grant(short, urgent=True)
                    answered = time.monotonic()
                    if int(reply[0]) > 0:  # borrowed (allowed at once), or free anyway
                        first, interval, now = (float(x) for x in reply[1:4])
                        self._book(int(reply[0]), first, interval, now, answered, borrowed=True)
                        continue
                    self._borrow_after = answered + int(reply[1]) / 1000
                reply = await self.grant(needed)
                count = int(reply[0])
                if count > 0:
                    # timed from the answer: a grid point is never before Redis's own
                    first, interval, now = (float(x) for x in reply[1:4])
                    self._book(count, first, interval, now, time.monotonic())
                    continue
                delay = min(int(reply[1]) / 1000, MAX_POLL_S) * random.uniform(0.8, 1.2)
                await self._rest(stop, delay)
        except Exception as exc:
            # the waiting jobs see the failure (Redis unavailable) and handle it themselves
            self._fail_waiters(exc)
        except BaseException:
            self._fail_waiters(None)
            raise
        finally:
            self._poller = None

    async def _rest(self, stop: asyncio.Event | None, delay: float) -> None:
        """Wait `delay` before asking again; less when stop is set or an urgent want comes."""
        nudge = self._nudge = asyncio.get_running_loop().create_future()
        stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            await asyncio.wait([f for f in (nudge, stopping) if f is not None], timeout=delay)
        finally:
            if stopping is not None:
                stopping.cancel()
            self._nudge = None

    def _end_waiters(self) -> None:
        """Stop: every waiting caller gets no slot (None)."""
        for waiter in self._live():
            waiter.end(None)
        self._urgent.clear()
        self._waiters.clear()

    def _book(
        self,
        count: int,
        first_ms: float,
        interval_ms: float,
        now_ms: float,
        answered: float,
        borrowed: bool = False,
    ) -> None:
        """Schedule `count` slots, the first `first_ms` after Redis's `now_ms` (our `answered`)
        and then one every `interval_ms`, each to be handed out at its grid point.

        The jobs of one grid point are woken by one timer, at the point: one wake-up per job
        (or per read batch), not a grant now and a sleep until the slot. Slots free at once are
        handed out by a timer too (at `answered`, already past): at a dense rate the slots just
        after them are on grid points only nanoseconds later, and every timer that is due wakes
        in the same loop turn, so a read batch's jobs stay one group (one bulk call), not the
        first alone. Who gets a point's slots is decided when it comes (`_hand_point`). The
        grid's step comes from the configured rate, not the rate in force: slots booked
        before and after an AIMD change share one grid."""
        step_ms = self._step * 1000
        reserved = LATE_S if interval_ms >= DENSE_INTERVAL_S * 1000 else IMMEDIATE_LATE_S
        points: dict[float, int] = {}
        for slot in range(count):
            ahead = first_ms + slot * interval_ms
            if ahead > 0:  # the grid is laid on Redis's clock: every replica shares it
                point = math.ceil((now_ms + ahead) / step_ms) * step_ms
                at = answered + (point - now_ms) / 1000
            else:
                at = answered
            points[at] = points.get(at, 0) + 1
        loop = asyncio.get_running_loop()
        for at, n in points.items():
            self._points[at] = self._points.get(at, 0) + n
            # a borrowed slot is held to LATE_S: it is on top of the schedule
            tolerance = reserved if at > answered or borrowed else IMMEDIATE_LATE_S
            loop.call_at(at, self._hand_point, Grant(at, tolerance), n)

    def _hand_point(self, grant: Grant, count: int) -> None:
        """A grid point came: its `count` slots go to the urgent wants first, then in order."""
        if (left := self._points.pop(grant.at, 0) - count) > 0:
            self._points[grant.at] = left  # another booking's timer for the same point
        given: list[tuple[Want, list[Grant]]] = []
        for waiter in self._live():
            if count <= 0:
                break
            take = min(count, waiter.left)
            waiter.left -= take
            count -= take
            given.append((waiter, [grant] * take))
        for queue in (self._urgent, self._waiters):
            while queue and queue[0].left <= 0:
                queue.popleft()
        _hand_out(given)
        self._poll_if_needed()  # a caller that gave up left its booked slots to the others

    def _fail_waiters(self, exc: Exception | None) -> None:
        """The waiting callers beyond what is booked see the failure (or, None: a
        cancellation) themselves; those the booked slots cover still get them."""
        covered = self.booked
        for queue in (self._urgent, self._waiters):
            kept: deque[Want] = deque()
            for waiter in queue:
                if waiter.done():
                    continue
                if waiter.left <= covered:
                    covered -= waiter.left
                    kept.append(waiter)
                else:
                    covered = 0
                    waiter.end(asyncio.CancelledError() if exc is None else exc)
            queue.clear()
            queue.extend(kept)

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

"""The send rate shared by every sender replica: one GCRA schedule in Redis (`rate_limiter.lua`).

- One token = one recipient, EMAIL_RATE per second cluster-wide (scheduled `HEADROOM` under it),
  EMAIL_BURST at once.
- A grant may be a short *reservation*: the script books the next slot at most `MAX_RESERVE_MS`
  ahead and the caller sleeps until it. Booking further ahead would let many replicas with many
  waiting jobs fill the schedule for seconds, so beyond that the script only says when to ask
  again.
- AIMD: a throttle report (HTTP 429 / Throttling) multiplies the rate by `DECREASE`, at most once
  per `COOLDOWN_MS` for the whole cluster (one SES answer wave is one congestion signal, not 64),
  never below `FLOOR` of EMAIL_RATE; it then recovers by `RECOVERY` of the rate per second.
- The rate is also capped by SES's MaxSendRate when the upkeep task has read it (`set_ceiling`).
- `pause()` stops every replica until a time (account paused, daily quota exhausted).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

from common.keys import Keys
from common.scripts import register
from common.settings import Settings

# The schedule runs this much under EMAIL_RATE (and SES's MaxSendRate): evenly spaced sends still
# reach SES with network jitter, and a late one plus an on-time one can share a second.
HEADROOM = 0.98
DECREASE = 0.7
COOLDOWN_MS = 1000
FLOOR = 0.05
RECOVERY = 0.2
MAX_RESERVE_MS = 500
# Waiting jobs ask again at least this often, so that a lifted pause or a recovered rate is
# noticed soon; jitter spreads the replicas' polls.
MAX_POLL_S = 1.0


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
        self._gate = asyncio.Lock()

    async def _call(self, mode: str, *extra: Any, now_ms: float | None = None) -> Any:
        now = "" if now_ms is None else repr(float(now_ms))
        args = [mode, now, self.rate, self.burst, FLOOR, RECOVERY, *extra]
        reply: Any = await self._script(keys=[self.key], args=args)
        return reply

    async def try_acquire(
        self, tokens: int = 1, *, now_ms: float | None = None
    ) -> tuple[bool, float]:
        """One attempt: (granted, seconds). Granted: send after `seconds` (a reservation).
        Not granted: ask again after `seconds`."""
        granted, wait_ms = await self._call("acquire", tokens, MAX_RESERVE_MS, now_ms=now_ms)
        return bool(int(granted)), int(wait_ms) / 1000.0

    async def acquire(self, stop: asyncio.Event | None = None, tokens: int = 1) -> bool:
        """Wait for `tokens`; False when `stop` was set while waiting without a grant.

        Within one process the waiters queue on a lock and only the first asks Redis: 64
        waiting jobs cost one poll, not 64, and they are served in order. The lock is let go
        as soon as a slot is granted, so the next waiter can book the following slot while
        this one sleeps until its own."""
        async with self._gate:
            while True:
                if stop is not None and stop.is_set():
                    return False
                granted, wait = await self.try_acquire(tokens)
                if granted:
                    break
                delay = min(wait, MAX_POLL_S) * random.uniform(0.8, 1.2)
                if stop is None:
                    await asyncio.sleep(delay)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if wait > 0:
            await asyncio.sleep(wait)  # our booked slot: at most MAX_RESERVE_MS ahead
        return True

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

"""At most one log line per reason and interval, for refusals anyone on the internet can cause:
a flood of forged requests must not become a flood of log lines (Prometheus counts each one)."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogThrottle:
    """`allow(key)` says whether to log now, and how many were held back since the last line.

    Keys must come from a small fixed set (refusal reasons), never from the request.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

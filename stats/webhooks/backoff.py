"""When a failed delivery is tried again: exponential backoff with jitter, capped, for at most
WEBHOOK_RETRY_FOR after its first attempt. The first retries come within seconds (about 1, 2,
4, 8 s...), later ones at most MAX_DELAY_S apart."""

from __future__ import annotations

import random

BASE_DELAY_S = 1.0
MAX_DELAY_S = 3600.0


def retry_delay(attempts: int, rand: random.Random | None = None) -> float:
    """Seconds before attempt `attempts + 1`, after `attempts` failed ones: the capped
    exponential, with "equal jitter" (between half and all of it) so endpoints that failed
    together are not retried all at once."""
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** max(0, min(attempts - 1, 30)))
    return float(ceiling * (0.5 + 0.5 * (rand or random).random()))


def next_attempt_ms(
    attempts: int, first_ms: int, now_ms: int, retry_for_s: float, rand: random.Random | None = None
) -> int | None:
    """When to try again, or None when the retry window (from the first attempt) is over."""
    due = now_ms + int(retry_delay(attempts, rand) * 1000)
    if due - first_ms > retry_for_s * 1000:
        return None
    return due

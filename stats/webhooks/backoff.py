"""When a failed delivery is tried again: exponential backoff with jitter, capped, for at most
WEBHOOK_RETRY_FOR after its first attempt. The first retries come within seconds (about 1, 2,
4, 8 s...), later ones at most MAX_DELAY_S apart; a retry that would fall past the end of the
window is made at its end instead, so the last attempt comes when the window closes, not up to
MAX_DELAY_S before."""

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
    """When to try again (at the latest when the retry window ends), or None when the window
    (from the first attempt) is over."""
    deadline = first_ms + int(retry_for_s * 1000)
    if now_ms >= deadline:
        return None
    return min(now_ms + int(retry_delay(attempts, rand) * 1000), deadline)

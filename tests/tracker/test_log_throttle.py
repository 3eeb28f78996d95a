"""Refusal logs: one line per reason and minute, with the count held back in between."""

from __future__ import annotations

from sesflow.tracker.log_throttle import LogThrottle


def test_one_line_per_reason_and_interval() -> None:
    now = [0.0]
    throttle = LogThrottle(interval=60.0, clock=lambda: now[0])
    assert throttle.allow("topic") == (True, 0)
    assert throttle.allow("topic") == (False, 0)
    assert throttle.allow("stale") == (True, 0)  # reasons are throttled apart
    now[0] = 59.9
    assert throttle.allow("topic") == (False, 0)
    now[0] = 60.0
    assert throttle.allow("topic") == (True, 2)  # and says how many it held back
    assert throttle.allow("topic") == (False, 0)

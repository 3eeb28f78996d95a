"""Query-string parsing for the stats API: every bad value is an InputError (HTTP 400)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sesflow.common.errors import InputError
from sesflow.common.http import int_param

DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_HOURS = 720


def hours_param(raw: str | None) -> int:
    return int_param(raw, "hours", 24, 1, MAX_HOURS)


def time_param(raw: str | None, name: str, default: float) -> float:
    """Epoch seconds, epoch milliseconds (Grafana's ${__from}) or RFC 3339."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is not None:
        if value != value or value < 0:  # NaN or negative
            raise InputError("invalid_parameter", f"{name} must be a positive time")
        return value / 1000 if value > 1e11 else value
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            "invalid_parameter", f"{name} must be epoch seconds, epoch ms or RFC 3339"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def step_param(raw: str | None, default: int = 60) -> int:
    """Seconds, or a duration such as `30s`, `5m`, `1h` (Grafana's $__interval)."""
    if raw is None or raw == "":
        return default
    match = DURATION.match(raw.strip())
    if not match:
        raise InputError("invalid_parameter", "step must be seconds or a duration like 5m")
    seconds = int(match.group(1)) * UNIT_S[match.group(2) or "s"]
    if seconds < 60:
        raise InputError("invalid_parameter", "step must be at least 60 seconds")
    if seconds > 30 * 86400:
        raise InputError("invalid_parameter", "step must be at most 30 days")
    return int(seconds)

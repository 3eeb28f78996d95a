"""The tracker's Prometheus metrics (the pattern is `common.metrics`'s).

The webhook and the link handlers count into these module-level counters (one tracker per
process); every tracker app's registry serves them.
"""

from __future__ import annotations

from prometheus_client import Counter

from sesflow.common.metrics import RoleMetrics

# registry=None: not in prometheus-client's default registry; `role_metrics()` serves them.
EVENTS = Counter(
    "sesflow_events",
    "Events the tracker received and recorded, by type",
    ["type"],
    registry=None,
)
SNS_MESSAGES = Counter(
    "sesflow_tracker_sns_messages",
    "SNS deliveries received, by message type and outcome",
    ["type", "outcome"],
    registry=None,
)
SNS_REJECTED = Counter(
    "sesflow_tracker_sns_verification_failures",
    "SNS deliveries refused, by reason",
    ["reason"],
    registry=None,
)
LINKS_REFUSED = Counter(
    "sesflow_tracker_invalid_tokens",
    "Open, click and unsubscribe requests with an invalid token, by kind",
    ["kind"],
    registry=None,
)
RECORD_FAILURES = Counter(
    "sesflow_tracker_record_failures",
    "Opens and clicks that could not be recorded (Redis unavailable), by kind",
    ["kind"],
    registry=None,
)
SOFT_BOUNCES = Counter(
    "sesflow_tracker_soft_bounces",
    "Soft bounces counted by the soft-bounce rule; `suppressed`: those at SOFT_BOUNCE_LIMIT",
    ["outcome"],
    registry=None,
)
for _outcome in ("counted", "suppressed"):  # served at 0 before the first soft bounce
    SOFT_BOUNCES.labels(_outcome)


def count_events(types: list[str]) -> None:
    for kind in types:
        EVENTS.labels(kind).inc()


def role_metrics() -> RoleMetrics:
    return RoleMetrics(
        "tracker",
        collectors=(
            EVENTS,
            SNS_MESSAGES,
            SNS_REJECTED,
            LINKS_REFUSED,
            RECORD_FAILURES,
            SOFT_BOUNCES,
        ),
    )

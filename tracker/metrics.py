"""The tracker's Prometheus metrics, in a registry of its own (one per app, so tests can build
several apps in one process), with the ones every role serves (HTTP requests, Redis reconnects)."""

from __future__ import annotations

from prometheus_client import Counter

from sesflow.common.metrics import RoleMetrics


class TrackerMetrics(RoleMetrics):
    def __init__(self) -> None:
        super().__init__("tracker")
        self.events = Counter(
            "sesflow_events",
            "Events the tracker received and recorded, by type",
            ["type"],
            registry=self.registry,
        )
        self.sns_messages = Counter(
            "sesflow_tracker_sns_messages",
            "SNS deliveries received, by message type and outcome",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.sns_rejected = Counter(
            "sesflow_tracker_sns_verification_failures",
            "SNS deliveries refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.links_refused = Counter(
            "sesflow_tracker_invalid_tokens",
            "Open, click and unsubscribe requests with an invalid token, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.record_failures = Counter(
            "sesflow_tracker_record_failures",
            "Opens and clicks that could not be recorded (Redis unavailable), by kind",
            ["kind"],
            registry=self.registry,
        )

    def count_events(self, types: list[str]) -> None:
        for kind in types:
            self.events.labels(kind).inc()

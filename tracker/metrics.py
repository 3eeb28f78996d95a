"""The tracker's Prometheus metrics, in a registry of its own (one per app, so tests can build
several apps in one process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


class TrackerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "sesflow_tracker_events",
            "Events the tracker recorded, by type",
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

    async def handler(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

"""Every role's /metrics serves the Prometheus names (and labels) deploy/ is built on, after real
work through the role's own code: an accepted message, an open, applied events, SES sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sesflow.common.keys import Keys
from sesflow.common.schema import Event, EventType, Job, MessageContent, event_fields
from sesflow.common.settings import Settings
from sesflow.common.tracking import Token, sign
from sesflow.ingest.api import create_app as ingest_app
from sesflow.sender import upkeep
from sesflow.sender.metrics import create_app as sender_metrics_app
from sesflow.sender.ses_client import SesClient
from sesflow.sender.state import recipient_states
from sesflow.sender.worker import Sender
from sesflow.stats.aggregate import StatsAggregator, stats_client
from sesflow.stats.api import create_app as stats_app
from sesflow.tracker.app import create_app as tracker_app

from support.sesstub import SesStub
from support.until import until

# name of a sample -> the labels the brief gives it (a `partition` label may come on top).
STATS = {
    "sesflow_stream_length": {"stream"},
    "sesflow_stream_pending": {"stream", "group"},
    "sesflow_stream_lag": {"stream", "group"},
    "sesflow_backlog": {"lane"},
    "sesflow_dead_letters": {"stream"},
    "sesflow_events_total": {"type"},
    "sesflow_guard_trips_total": {"reason"},
    "sesflow_webhook_deliveries_total": {"outcome"},
    "sesflow_webhook_delivery_seconds_bucket": {"le"},
    "sesflow_webhook_delivery_seconds_count": set(),
    "sesflow_webhook_backlog": {"endpoint"},
}
SENDER = {
    "sesflow_rate_tokens": set(),
    "sesflow_rate_effective_per_second": set(),
    "sesflow_rate_configured_per_second": set(),
    "sesflow_sends_total": {"outcome"},
    "sesflow_ses_call_seconds_bucket": {"le"},
    "sesflow_ses_call_seconds_sum": set(),
    "sesflow_ses_call_seconds_count": set(),
    "sesflow_ses_errors_total": {"error_class"},
    "sesflow_setup_paused": set(),
    "sesflow_setup_sends_total": {"outcome", "configuration_set", "tenant"},
}
TRACKER = {
    "sesflow_events_total": {"type"},
    "sesflow_tracker_soft_bounces_total": {"outcome"},
}
ARCHIVE = {
    "sesflow_archive_lag": set(),
    "sesflow_archive_pending": set(),
    "sesflow_archive_events_total": {"type"},
    "sesflow_archive_batches_total": set(),
    "sesflow_archive_database_errors_total": set(),
    "sesflow_archive_dead_lettered_total": set(),
    "sesflow_archive_write_seconds": set(),
}
EVERY_ROLE = {"sesflow_redis_reconnects_total": {"role"}}
HTTP = {"sesflow_http_requests_total": {"role", "route", "status"}}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def assert_served(samples: Samples, expected: dict[str, set[str]], role: str) -> None:
    for name, labels in expected.items():
        assert name in samples, f"{role} does not serve {name}"
        for got, _ in samples[name]:
            assert labels <= set(got) <= labels | {"partition"}, f"{role}: {name}{got}"


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def start(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def scrape(client: TestClient[Any, Any]) -> Samples:
    res = await client.get("/metrics")
    assert res.status == 200
    assert res.headers["Content-Type"].startswith("text/plain")
    return parse(await res.text())


async def test_ingest_metrics(settings: Settings, serve: Any) -> None:
    client = await serve(ingest_app(settings))
    before = await scrape(client)
    message = {
        "topic_id": "m1",
        "emails": ["a@example.com", "b@example.com"],
        "subject": "S",
        "content": "<p>x</p>",
    }
    assert (await client.post("/v1/messages", json={"messages": [message]})).status == 202
    assert (await client.get("/nowhere")).status == 404
    samples = await scrape(client)
    assert_served(samples, {**EVERY_ROLE, **HTTP}, "ingest")
    assert value(samples, "sesflow_redis_reconnects_total", role="ingest") >= 0
    ok = {"role": "ingest", "route": "/v1/messages", "status": "202"}
    assert value(samples, "sesflow_http_requests_total", **ok) == 1
    assert value(samples, "sesflow_http_requests_total", route="unmatched", status="404") == 1
    for name, grew in (
        ("sesflow_ingest_messages_accepted_total", 1),
        ("sesflow_ingest_recipients_accepted_total", 2),
    ):
        assert value(samples, name) - value(before, name) == grew


async def test_tracker_metrics(settings: Settings, serve: Any) -> None:
    client = await serve(tracker_app(settings))
    before = await scrape(client)
    token = sign(b"test-tracking-secret", Token(k="o", r=f"{int(time.time() * 1000)}-0_0", t="m1"))
    assert (await client.get("/v1/events/open", params={"t": token})).status == 200
    samples = await scrape(client)
    assert_served(samples, {**TRACKER, **EVERY_ROLE, **HTTP}, "tracker")
    opened = value(samples, "sesflow_events_total", type="opened")
    assert opened - value(before, "sesflow_events_total", type="opened") == 1
    route = {"role": "tracker", "route": "/v1/events/open", "status": "200"}
    assert value(samples, "sesflow_http_requests_total", **route) == 1


async def test_stats_metrics(
    redis: Any, make_settings: Callable[..., Settings], serve: Any
) -> None:
    settings = make_settings(STATS_FLUSH_INTERVAL="0.02", SHUTDOWN_GRACE="2")
    events = Keys().partition(0).events
    now = int(time.time() * 1000)
    for kind in (EventType.ACCEPTED, EventType.SENT, EventType.SENT):
        event = Event(type=kind, ts=now, topic="m1", msg_id=f"{now}-0", n=1)
        await redis.xadd(events, event_fields(event))
    await redis.hset(Keys().partition(0).webhook_backlog, "ep_1", 3)
    consumer = StatsAggregator(stats_client(settings), settings)
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    try:

        async def sent_seen() -> int:
            return consumer.metrics.events["sent"]

        await until(sent_seen, lambda n: n == 2, what="stats to read both sent events")
        client = await serve(stats_app(settings, aggregator_metrics=consumer.metrics))
        assert (await client.get("/v1/topics/m1")).status == 200
        samples = await scrape(client)
    finally:
        stop.set()
        await consuming
        await consumer.client.aclose()
    assert_served(samples, {**STATS, **EVERY_ROLE, **HTTP}, "stats")
    assert value(samples, "sesflow_events_total", type="sent") == 2
    assert {labels["reason"] for labels, _ in samples["sesflow_guard_trips_total"]} == {
        "bounce_rate",
        "complaint_rate",
    }
    assert value(samples, "sesflow_stream_length", stream="events", partition="0") == 3
    lag = {"stream": "events", "group": "stats", "partition": "0"}
    assert value(samples, "sesflow_stream_lag", **lag) == 0
    assert value(samples, "sesflow_webhook_backlog", endpoint="ep_1") == 3
    assert value(samples, "sesflow_webhook_deliveries_total", outcome="dead") >= 0
    route = {"role": "stats", "route": "/v1/topics/{topic_id}", "status": "200"}
    assert value(samples, "sesflow_http_requests_total", **route) == 1


async def test_sender_metrics(
    redis: Any, make_settings: Callable[..., Settings], serve: Any
) -> None:
    async with SesStub(reject_pattern="^refused@") as stub:
        settings = make_settings(
            SES_ENDPOINT_URL=stub.url,
            AWS_ACCESS_KEY_ID="AKIDTESTING",
            AWS_SECRET_ACCESS_KEY="testing-secret",
            EMAIL_SENDER="noreply@example.com",
            EMAIL_RATE="500",
        )
        part = Keys().partition(0)
        msg_id = f"{int(time.time() * 1000)}-0"
        emails = ["ok@example.com", "refused@example.com"]
        content = MessageContent(msg_id=msg_id, topic="m1", subject="S", html="<p>x</p>", total=2)
        await redis.hset(part.message(msg_id), mapping=content.to_hash())
        for index, email in enumerate(emails):
            await redis.xadd(part.sends, Job(msg_id=msg_id, index=index, email=email).fields())
        ses = SesClient(settings)
        sender = Sender(settings, redis, ses, b"test-tracking-secret")
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        try:
            await until(
                lambda: recipient_states(redis, part, msg_id),
                lambda states: (
                    len(states) == 2 and not any(v.startswith("i:") for v in states.values())
                ),
                what="the sender to finish both jobs",
            )
            await upkeep.update_gauges(sender)
            client = await serve(sender_metrics_app(settings, sender.health, client=redis))
            samples = await scrape(client)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await ses.close()
    assert_served(samples, {**SENDER, **EVERY_ROLE}, "sender")
    assert value(samples, "sesflow_sends_total", outcome="sent") >= 1
    assert value(samples, "sesflow_sends_total", outcome="failed") >= 1
    assert value(samples, "sesflow_ses_errors_total", error_class="SesRejected") >= 1
    assert value(samples, "sesflow_ses_call_seconds_count") >= 2
    assert value(samples, "sesflow_setup_sends_total", outcome="sent", configuration_set="") >= 1
    assert value(samples, "sesflow_rate_configured_per_second") == 500
    assert value(samples, "sesflow_rate_effective_per_second") > 0


async def test_archive_metrics_on_stats(
    redis: Any, make_settings: Callable[..., Settings], serve: Any
) -> None:
    from sesflow.stats.archive.db import connect_archive
    from sesflow.stats.archive.writer import ArchiveWriter

    settings = make_settings(STATS_FLUSH_INTERVAL="0.02", SHUTDOWN_GRACE="2")
    now = int(time.time() * 1000)
    for kind in (EventType.ACCEPTED, EventType.SENT, EventType.SENT):
        event = Event(type=kind, ts=now, topic="m1", msg_id=f"{now}-0", n=1)
        await redis.xadd(Keys().partition(0).events, event_fields(event))
    db = await connect_archive(settings)
    writer = ArchiveWriter(stats_client(settings), settings, db)
    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    try:

        async def archived() -> int:
            return writer.metrics.events["sent"]

        await until(archived, lambda n: n == 2, what="the archive to store both sent events")
        client = await serve(stats_app(settings, archive_metrics=writer.metrics))
        samples = await scrape(client)
    finally:
        stop.set()
        await writing
        await writer.client.aclose()
        await db.close()
    assert_served(samples, ARCHIVE, "stats")
    assert value(samples, "sesflow_archive_events_total", type="sent") == 2
    assert value(samples, "sesflow_archive_lag", partition="0") == 0
    assert value(samples, "sesflow_archive_pending", partition="0") == 0
    assert value(samples, "sesflow_archive_batches_total") >= 1

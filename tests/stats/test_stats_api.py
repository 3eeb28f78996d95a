from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sesflow.common.aws import Quota
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.pauses import ALL_BULK, Pauses
from sesflow.common.schema import Event
from sesflow.common.settings import Settings
from sesflow.common.setup_pauses import SetupPause, encode_pause
from sesflow.stats import quota as quota_module
from sesflow.stats.api import create_app
from sesflow.stats.quota import QuotaCache

from support.apptest import AppTestServer
from support.statskit import FAST, add_events, aggregator, drained, running
from support.until import until

QUOTA = Quota(max_send_rate=14.0, max_24h_send=50000.0, sent_last_24h=1234.0, source="test")


async def fake_quota(_: Settings) -> Quota:
    return QUOTA


async def no_quota(_: Settings) -> None:
    return None


async def apply(settings: Settings, redis: Any, *events: Event, partition: int = 0) -> None:
    keys = Keys(settings.redis_prefix, settings.send_partitions)
    await add_events(redis, keys, *events, partition=partition)
    async with running(aggregator(settings)):
        await drained(redis, keys)


async def serve(app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(AppTestServer(app))
    await client.start_server()
    return client


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**FAST)


@pytest.fixture
async def api(fast: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    client = await serve(create_app(fast, quota_fetcher=fake_quota))
    yield client
    await client.close()


def campaign(topic: str, ts: int) -> list[Event]:
    events = [Event(type="accepted", topic=topic, ts=ts, n=10)]
    events += [Event(type="sent", topic=topic, ts=ts, index=i) for i in range(6)]
    events += [
        Event(type="failed", topic=topic, ts=ts, index=6),
        Event(type="stopped", topic=topic, ts=ts, index=7),
        Event(type="delivered", topic=topic, ts=ts, index=0),
        Event(type="delivered", topic=topic, ts=ts, index=1),
        Event(type="bounced", topic=topic, ts=ts, index=2, bounce_type="Permanent"),
        Event(type="complained", topic=topic, ts=ts, index=3),
        Event(type="opened", topic=topic, ts=ts, index=0, unique=True),
        Event(type="opened", topic=topic, ts=ts, index=0),
        Event(type="clicked", topic=topic, ts=ts, index=0, unique=True, url="https://x"),
        Event(type="rejected", topic=topic, ts=ts, n=2),
    ]
    return events


async def test_topic_counts_and_compatibility_aliases(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    await apply(fast, redis, *campaign("news", int(time.time() * 1000)))
    res = await api.get("/v1/topics/news")
    assert res.status == 200
    body = await res.json()
    expected = {
        "topic_id": "news",
        "total": 10,
        "created": 2,
        "sent": 6,
        "failed": 1,
        "stopped": 1,
        "suppressed": 0,
        "unknown": 0,
        "rejected": 2,
        "delivered": 2,
        "bounced": 1,
        "bounced_hard": 1,
        "bounced_soft": 0,
        "complained": 1,
        "opened": 2,
        "opened_unique": 1,
        "clicked": 1,
        "clicked_unique": 1,
        "unsubscribed": 0,
        "delivery_delayed": 0,
        "success": 6,
        "failure": 1,
        "open_count": 2,
        "pending": 2,
    }
    assert {k: body[k] for k in expected} == expected
    assert body["request_counts"] == {"Created": 2, "Sent": 6, "Failed": 1, "Stopped": 1}
    assert body["result_counts"] == {"Delivery": 2, "Bounce": 1, "Complaint": 1, "Open": 1}


async def test_unknown_topic_is_a_404_json(api: TestClient[Any, Any]) -> None:
    res = await api.get("/v1/topics/nope")
    assert res.status == 404
    assert (await res.json())["error"] == "not_found"


async def test_results_count_has_exactly_the_go_service_shape(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    await apply(fast, redis, *campaign("plan-1", int(time.time() * 1000)))
    res = await api.get("/v1/results/count/plan-1")
    assert await res.json() == {"total": 10, "created": 2, "sent": 6, "failed": 1, "stopped": 1}
    res = await api.get("/v1/results/count/unknown-plan")
    assert await res.json() == {"total": 0, "created": 0, "sent": 0, "failed": 0, "stopped": 0}


async def test_sent_in_the_last_hours(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    now = time.time()
    at = [now - 60, now - 60, now - 90 * 60, now - 5 * 3600, now - 30 * 3600, now - 100 * 3600]
    await apply(fast, redis, *[Event(type="sent", ts=int(t * 1000)) for t in at])
    counts = {}
    for hours in (1, 2, 6, 24, 48, 720):
        res = await api.get(f"/v1/results/sent?hours={hours}")
        counts[hours] = (await res.json())["count"]
    assert counts == {1: 2, 2: 3, 6: 4, 24: 4, 48: 5, 720: 6}
    assert await (await api.get("/v1/results/sent")).json() == {"count": 4}


@pytest.mark.parametrize("query", ["hours=0", "hours=721", "hours=abc", "hours=1.5", "hours=-3"])
async def test_bad_hours_is_a_400(api: TestClient[Any, Any], query: str) -> None:
    for path in ("/v1/results/sent", "/v1/events/counts/sent"):
        res = await api.get(f"{path}?{query}")
        assert res.status == 400
        assert set(await res.json()) == {"error", "detail"}


async def test_counts_sent_with_the_ses_quota(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    await apply(fast, redis, *[Event(type="sent", topic="t") for _ in range(3)])
    await asyncio.wait_for(api.app[_quota_key()].refreshed.wait(), 2)
    body = await (await api.get("/v1/events/counts/sent")).json()
    assert body["count"] == 3 and body["hours"] == 24
    assert body["max_send_rate"] == 14.0 and body["MaxSendRate"] == 14.0
    assert body["max_24h_send"] == 50000.0 and body["Max24HourSend"] == 50000.0
    assert body["sent_last_24h"] == 1234.0 and body["SentLast24Hours"] == 1234.0
    assert body["remaining_24h"] == 50000.0 - 1234.0
    assert body["quota_source"] == "test"


def _quota_key() -> Any:
    from sesflow.stats.api import QUOTA as key

    return key


async def test_counts_sent_never_waits_for_ses(fast: Settings) -> None:
    async def slow(_: Settings) -> Quota:
        await asyncio.sleep(30)
        return QUOTA

    client = await serve(create_app(fast, quota_fetcher=slow))
    try:
        started = time.monotonic()
        body = await (await client.get("/v1/events/counts/sent")).json()
        assert time.monotonic() - started < 5
        assert body["count"] == 0 and body["max_send_rate"] is None
        assert body["quota_source"] is None
    finally:
        await client.close()


async def test_counts_sent_when_ses_does_not_answer(fast: Settings) -> None:
    client = await serve(create_app(fast, quota_fetcher=no_quota))
    try:
        await asyncio.wait_for(client.app[_quota_key()].refreshed.wait(), 2)
        body = await (await client.get("/v1/events/counts/sent?hours=2")).json()
        assert body["hours"] == 2 and body["Max24HourSend"] is None
        assert body["remaining_24h"] is None
    finally:
        await client.close()


async def test_timeseries_global_and_per_topic(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    minute = int(time.time() // 60) - 5
    events = [
        Event(type="sent", topic="a", ts=(minute) * 60_000 + 1000),
        Event(type="sent", topic="a", ts=(minute) * 60_000 + 2000),
        Event(type="sent", topic="b", ts=(minute + 1) * 60_000),
        Event(type="sent", topic="a", ts=(minute + 3) * 60_000 + 59_000),
        Event(type="bounced", topic="a", ts=(minute + 3) * 60_000, bounce_type="Permanent"),
    ]
    await apply(fast, redis, *events)
    start, end = minute * 60, (minute + 4) * 60
    res = await api.get(f"/v1/stats/timeseries?metric=sent&from={start}&to={end}&step=60")
    body = await res.json()
    assert res.status == 200
    assert body["step"] == 60 and body["from"] == start and body["buckets"] == "minute"
    assert [p["value"] for p in body["points"]] == [2, 1, 0, 1, 0]
    assert [p["time"] for p in body["points"]] == [(start + 60 * k) * 1000 for k in range(5)]
    assert body["datapoints"][0] == [2, start * 1000]

    iso = datetime.fromtimestamp(start, UTC).isoformat().replace("+00:00", "Z")
    res = await api.get(f"/v1/stats/timeseries?metric=sent&topic=a&from={iso}&to={end}&step=2m")
    body = await res.json()
    assert body["topic"] == "a" and body["target"] == "a:sent" and body["step"] == 120
    assert sum(p["value"] for p in body["points"]) == 3

    res = await api.get(
        f"/v1/stats/timeseries?metric=bounced_hard&from={start * 1000}&to={end * 1000}"
    )
    assert sum(p["value"] for p in (await res.json())["points"]) == 1


async def test_timeseries_uses_hourly_buckets_for_old_ranges(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    now = time.time()
    await apply(fast, redis, Event(type="sent", ts=int((now - 3 * 86400) * 1000)))
    res = await api.get(f"/v1/stats/timeseries?from={int(now - 4 * 86400)}&step=60")
    body = await res.json()
    assert body["buckets"] == "hour" and body["step"] % 3600 == 0
    assert len(body["points"]) <= 1440
    assert sum(p["value"] for p in body["points"]) == 1


async def test_timeseries_points_are_bounded(api: TestClient[Any, Any]) -> None:
    now = int(time.time())
    res = await api.get(f"/v1/stats/timeseries?from={now - 47 * 3600}&to={now}&step=60")
    body = await res.json()
    assert res.status == 200 and len(body["points"]) <= 1440 and body["step"] >= 120
    res = await api.get(f"/v1/stats/timeseries?from={now - 3600}&to={now}&step=30d")
    body = await res.json()
    assert res.status == 200 and len(body["points"]) == 1 and body["step"] == 30 * 86400


@pytest.mark.parametrize(
    "query",
    [
        "metric=bogus",
        "step=30",
        "step=abc",
        "from=yesterday",
        "from=2000&to=1000",
        "from=nan",
        "topic=a&from=1000",
    ],
)
async def test_bad_timeseries_params_are_400(api: TestClient[Any, Any], query: str) -> None:
    res = await api.get(f"/v1/stats/timeseries?{query}")
    assert res.status == 400, await res.text()
    assert (await res.json())["error"] == "invalid_parameter"


async def test_charts_sends_per_second_and_feedback_per_minute(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    now = int(time.time())
    events = [Event(type="sent", topic="a", ts=(now - 30) * 1000 + k) for k in range(3)]
    events += [Event(type="sent", topic="b", ts=(now - 300) * 1000)]
    minute = now // 60
    events += [
        Event(type="delivered", topic="a", ts=(minute - 2) * 60_000, n=4),
        Event(type="bounced", topic="a", ts=(minute - 2) * 60_000, bounce_type="Permanent"),
        Event(type="complained", topic="a", ts=(minute - 1) * 60_000),
        Event(type="opened", topic="a", ts=minute * 60_000, n=2),
        Event(type="clicked", topic="a", ts=minute * 60_000),
    ]
    await apply(fast, redis, *events)
    res = await api.get("/v1/stats/charts?hours=2")
    assert res.status == 200, await res.text()
    body = await res.json()
    assert body["configured_rate"] == 14.0 and body["rate_window_s"] == 10
    sends = body["sent_per_second"]
    assert sends["step_s"] == 1 and len(sends["values"]) == 15 * 60
    first = sends["start_ms"] // 1000
    # It ends where the live rate's window ends: the last seconds may still be filling.
    assert now - 2 - 900 <= first <= int(time.time()) - 2 - 900
    assert sends["values"][now - 30 - first] == 3
    assert sends["values"][now - 300 - first] == 1
    assert sum(sends["values"]) == 4
    feedback = body["feedback_per_minute"]
    assert feedback["step_s"] == 60
    start_minute = feedback["start_ms"] // 60_000
    series = feedback["series"]
    assert set(series) == {"delivered", "bounced", "complained", "opened", "clicked"}
    assert all(len(values) == 120 for values in series.values())
    assert start_minute + 119 >= minute  # up to the current minute, so far
    assert series["delivered"][minute - 2 - start_minute] == 4
    assert series["bounced"][minute - 2 - start_minute] == 1
    assert series["complained"][minute - 1 - start_minute] == 1
    assert (series["opened"][-1], series["clicked"][-1]) in ((2, 1), (0, 0))  # minute turned
    assert sum(series["opened"]) == 2 and sum(series["clicked"]) == 1

    res = await api.get("/v1/stats/charts?minutes=1&hours=1")
    body = await res.json()
    assert len(body["sent_per_second"]["values"]) == 60
    assert all(len(v) == 60 for v in body["feedback_per_minute"]["series"].values())


@pytest.mark.parametrize(
    "query", ["minutes=0", "minutes=16", "minutes=abc", "hours=0", "hours=25", "hours=1.5"]
)
async def test_bad_charts_params_are_400(api: TestClient[Any, Any], query: str) -> None:
    res = await api.get(f"/v1/stats/charts?{query}")
    assert res.status == 400, await res.text()
    assert (await res.json())["error"] == "invalid_parameter"


async def test_quota_is_read_again_while_someone_looks(
    fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota card once showed the figure from before a campaign for a minute: asked for,
    the quota is read again when older than FRESH_INTERVAL_S, and SES is never asked more
    often."""
    monkeypatch.setattr(quota_module, "FRESH_INTERVAL_S", 0.3)
    calls: list[float] = []

    async def fetch(_: Settings) -> Quota:
        calls.append(time.monotonic())
        return Quota(max_send_rate=14, max_24h_send=50000, sent_last_24h=len(calls), source="t")

    cache = QuotaCache(fast, fetch)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.refreshed.wait(), 2)
        assert cache.view()["sent_last_24h"] == 1

        async def viewed() -> int:
            return int(cache.view()["sent_last_24h"])

        # read again while asked for
        await until(viewed, lambda n: n >= 3, what="two more quota reads", within=5, every=0.01)
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert min(gaps) >= 0.3  # however often it is asked for
        asked = len(calls)
        await asyncio.sleep(0.8)  # nobody asks: no new question to SES within REFRESH_INTERVAL_S
        assert len(calls) == asked
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_overview_for_the_dashboard(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    keys = Keys()
    p = keys.partition(0)
    now_ms = int(time.time() * 1000)
    # Inside the rate window: the last 10 whole seconds that stats has surely applied.
    await apply(fast, redis, *campaign("news", now_ms - 5000))
    await apply(fast, redis, Event(type="accepted", topic="done", n=1, ts=now_ms - 6000))
    await apply(fast, redis, Event(type="sent", topic="done", ts=now_ms - 6000, index=0))
    for i in range(4):
        await redis.xadd(p.sends, {"m": "1-0", "i": str(i), "e": f"u{i}@example.com"})
    await redis.xgroup_create(p.sends, SENDERS_GROUP, id="0")
    await redis.xreadgroup(SENDERS_GROUP, "s1", {p.sends: ">"}, count=1)
    await redis.zadd(p.schedule, {"1-0:0": now_ms + 60_000})
    # Waiting for the pump: 2 transactional, 3 of news's bulk, 1 of a paused topic's.
    await redis.rpush(p.transactional, *(f"2-0\t{i}\tt{i}@example.com" for i in range(2)))
    await redis.rpush(p.backlog("news"), *(f"3-0\t{i}\tn{i}@example.com" for i in range(3)))
    await redis.zadd(p.backlog_topics, {"news": 0})
    await redis.rpush(p.backlog("held"), "4-0\t0\th@example.com")
    await Pauses(redis, keys).pause("held", "manual")

    res = await api.get("/v1/stats/overview")
    body = await res.json()
    assert res.status == 200
    assert body["configured_rate"] == 14.0
    assert body["rate_window_s"] == 10
    assert body["send_rate"] == 0.7  # 7 sent in the 10 s window
    assert body["totals"]["sent"] == 7 and body["totals"]["total"] == 11
    assert body["rates"]["delivery"] == round(2 / 7, 6)
    assert body["rates"]["bounce"] == round(1 / 7, 6)
    assert body["rates"]["complaint"] == round(1 / 7, 6)
    assert body["queue"]["pending"] == 1 and body["queue"]["lag"] == 3
    # queued: the 4 jobs on `sends` and the 6 waiting in a backlog; scheduled chunks apart.
    assert body["queue"]["queued"] == 10 and body["queue"]["scheduled"] == 1
    lanes = [
        {"lane": "transactional", "queued": 2},
        {"lane": "bulk", "queued": 3},
        {"lane": "paused", "queued": 1},
    ]
    assert body["queue"]["lanes"] == lanes
    assert body["queue"]["partitions"][0]["lanes"] == lanes
    topics = {t["topic_id"]: t for t in body["topics"]}
    assert list(topics) == ["news", "done"]  # most recent first
    news = topics["news"]
    assert news["total"] == 10 and news["sent"] == 6 and news["created"] == 2
    assert news["progress"] == 0.8 and not news["done"]
    assert news["send_rate"] == 0.6  # its share of the rate
    assert news["eta_seconds"] == round(2 / 0.6, 1)  # 2 still to send at that share
    assert (news["lane"], news["backlog"]) == ("bulk", 3)  # waiting in its bulk backlog
    assert (topics["done"]["lane"], topics["done"]["backlog"]) == (None, 0)  # not known
    assert topics["done"]["send_rate"] == 0.1
    assert topics["done"]["done"] and topics["done"]["eta_seconds"] is None
    assert "max_send_rate" in body["quota"]
    # Where the page's pause buttons call ingest: this host, as the page named it, at INGEST_PORT.
    assert body["ingest_url"] == f"http://127.0.0.1:{fast.ingest_port}"

    res = await api.get("/v1/stats/overview?limit=1")
    assert [t["topic_id"] for t in (await res.json())["topics"]] == ["news"]
    assert (await api.get("/v1/stats/overview?limit=0")).status == 400


async def test_ingest_url_names_where_the_pause_buttons_call(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(INGEST_URL="https://ingest.example.com/")
    client = await serve(create_app(settings, quota_fetcher=no_quota))
    try:
        body = await (await client.get("/v1/stats/overview")).json()
        assert body["ingest_url"] == "https://ingest.example.com"
    finally:
        await client.close()


async def test_overview_and_page_show_a_paused_ses_setup(
    api: TestClient[Any, Any], redis: Any
) -> None:
    body = await (await api.get("/v1/stats/overview")).json()
    assert body["setup_faults"] == []
    keys = Keys()
    pause = SetupPause(
        scope="configuration-set:typo",
        reason="configuration_set",
        code="NotFoundException",
        message="Configuration set <typo> does not exist.",
        since_ms=1_700_000_000_000,
    )
    await redis.hset(keys.setup_paused, pause.scope, encode_pause(pause))
    await redis.hset(keys.setup_paused, "from:x@example.net", "not json")
    body = await (await api.get("/v1/stats/overview")).json()
    unreadable, first = body["setup_faults"]  # oldest first; unreadable counts as 0
    assert first == {
        "scope": "configuration-set:typo",
        "reason": "configuration_set",
        "code": "NotFoundException",
        "message": "Configuration set <typo> does not exist.",
        "since_ms": 1_700_000_000_000,
    }
    assert unreadable["scope"] == "from:x@example.net" and unreadable["reason"] == "unknown"
    html = await (await api.get("/")).text()
    assert 'data-testid="setup-alert"' in html and "d.setup_faults" in html


async def test_a_topic_says_whether_it_is_paused_why_and_since_when(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    await apply(fast, redis, *campaign("news", int(time.time() * 1000)))
    body = await (await api.get("/v1/topics/news")).json()
    assert (body["paused"], body["paused_reason"], body["paused_at"]) == (False, None, None)
    assert "paused_figures" not in body and body["sent"] == 6

    pauses = Pauses(redis, Keys())
    manual, _ = await pauses.pause("news", "manual")
    body = await (await api.get("/v1/topics/news")).json()
    assert (body["paused"], body["paused_reason"], body["paused_at"]) == (True, "manual", manual.at)
    assert "paused_figures" not in body

    await pauses.resume("news")
    figures = {"sent": 100.0, "bounced_hard": 5.0, "rate": 0.05, "threshold": 0.05}
    tripped, _ = await pauses.pause("news", "bounce_rate", figures)
    body = await (await api.get("/v1/topics/news")).json()
    assert body["paused"] and body["paused_reason"] == "bounce_rate"
    assert body["paused_at"] == tripped.at and body["paused_figures"] == figures
    assert body["topic_id"] == "news" and body["sent"] == 6  # the counters as before


async def test_overview_and_page_show_the_pauses(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    now_ms = int(time.time() * 1000)
    await apply(fast, redis, *campaign("news", now_ms), *campaign("other", now_ms))
    body = await (await api.get("/v1/stats/overview")).json()
    assert body["bulk_pause"] == {"paused": False, "paused_reason": None, "paused_at": None}
    assert body["paused_topics"] == []
    assert all(not t["paused"] and not t["guarded"] for t in body["topics"])

    pauses = Pauses(redis, Keys())
    account = {"sent": 1000.0, "bounced_hard": 80.0, "rate": 0.08, "threshold": 0.08}
    topic, _ = await pauses.pause("news", "manual")
    bulk, _ = await pauses.pause(ALL_BULK, "bounce_rate", account)
    body = await (await api.get("/v1/stats/overview")).json()
    assert body["bulk_pause"] == {
        "paused": True,
        "paused_reason": "bounce_rate",
        "paused_at": bulk.at,
        "paused_figures": account,
    }
    assert body["paused_topics"] == [
        {"topic_id": "news", "paused": True, "paused_reason": "manual", "paused_at": topic.at}
    ]
    rows = {t["topic_id"]: t for t in body["topics"]}
    assert rows["news"]["paused"] and rows["news"]["paused_reason"] == "manual"
    assert not rows["news"]["guarded"]  # paused by hand, not by the reputation guard
    assert not rows["other"]["paused"]
    await pauses.pause("other", "complaint_rate", account)
    rows = {
        t["topic_id"]: t for t in (await (await api.get("/v1/stats/overview")).json())["topics"]
    }
    assert rows["other"]["paused"] and rows["other"]["guarded"]
    html = await (await api.get("/")).text()
    assert 'data-testid="pause-alert"' in html and "d.bulk_pause" in html


async def test_metrics_answer_from_redis(
    api: TestClient[Any, Any], redis: Any, fast: Settings
) -> None:
    await apply(fast, redis, *campaign("news", int(time.time() * 1000)))
    await redis.xadd(Keys().partition(0).events_dead, {"reason": "x"})
    res = await api.get("/metrics")
    assert res.status == 200
    text = await res.text()
    assert "sesflow_redis_up 1.0" in text
    assert 'sesflow_stream_length{partition="0",stream="events"}' in text
    assert 'sesflow_dead_letters{partition="0",stream="events"} 1.0' in text
    assert 'sesflow_stream_pending{group="stats",partition="0",stream="events"} 0.0' in text
    assert 'sesflow_stream_lag{group="stats",partition="0",stream="events"} 0.0' in text
    assert 'sesflow_counted_events_total{type="sent"} 6.0' in text
    assert 'sesflow_schedule_size{partition="0"}' in text


async def test_auth_protects_the_api_but_not_the_page_health_or_metrics(
    make_settings: Callable[..., Settings],
) -> None:
    client = await serve(
        create_app(make_settings(API_KEY="stats-test-api-key"), quota_fetcher=no_quota)
    )
    try:
        assert (await client.get("/v1/topics/x")).status == 401
        assert (await client.get("/v1/stats/overview")).status == 401
        assert (await client.get("/v1/stats/charts")).status == 401
        res = await client.get("/v1/results/count/x", headers={"x-api-key": "stats-test-api-key"})
        assert res.status == 200
        for path in ("/", "/health", "/metrics"):
            assert (await client.get(path)).status == 200, path
    finally:
        await client.close()


async def test_dashboard_page_is_self_contained(api: TestClient[Any, Any]) -> None:
    res = await api.get("/")
    assert res.status == 200 and res.content_type == "text/html"
    html = await res.text()
    for testid in (
        "send-rate",
        "configured-rate",
        "queue-depth",
        "delivery-rate",
        "bounce-rate",
        "complaint-rate",
        "opens",
        "clicks",
        "topics",
        "status",
    ):
        assert f'data-testid="{testid}"' in html
    assert "/v1/stats/overview" in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external


async def test_redis_down_is_a_503_not_a_500(make_settings: Callable[..., Settings]) -> None:
    from sesflow.cli.embedded import free_port

    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = await serve(create_app(settings, quota_fetcher=no_quota))
    try:
        res = await client.get("/v1/topics/x")
        assert res.status == 503
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and "sesflow_redis_up 0.0" in await metrics.text()
    finally:
        await client.close()

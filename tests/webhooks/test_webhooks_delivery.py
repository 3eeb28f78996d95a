"""Signed webhooks end to end, in one process: the stats app registers an endpoint, the fan-out
reads `events`, the deliverer calls a real receiver that verifies every signature with the
`standardwebhooks` library. The receiver goes down for 5 s (503) and nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sesflow.common.connection import ensure_group
from sesflow.common.keys import WEBHOOKS_GROUP, Keys
from sesflow.common.schema import Event, EventType, event_fields
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import stats_client
from sesflow.stats.api import create_app
from sesflow.stats.webhooks.fanout import BATCH_SIZE, WebhookFanout
from sesflow.stats.webhooks.signing import headers, new_secret

from support.apptest import AppTestServer
from support.until import until
from support.webhookkit import Receiver

KEYS = Keys()
P = KEYS.partition(0)


@pytest.fixture
def wh_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(WEBHOOK_ALLOW_PRIVATE="1", SHUTDOWN_GRACE="2", RECLAIM_IDLE="2")


@pytest.fixture
async def api(wh_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(AppTestServer(create_app(wh_settings)))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def fanout(wh_settings: Settings) -> AsyncIterator[WebhookFanout]:
    consumer = WebhookFanout(stats_client(wh_settings), wh_settings)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    yield consumer
    stop.set()
    await asyncio.wait_for(task, 15)
    await consumer.client.aclose()


async def register(api: TestClient[Any, Any], receiver: Receiver, **body: Any) -> dict[str, Any]:
    res = await api.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"], **body})
    assert res.status == 201, await res.text()
    answer: dict[str, Any] = await res.json()
    receiver.secrets.append(answer["secret"])
    return answer


def event(kind: EventType, n: int, topic: str = "t1", **extra: Any) -> Event:
    msg_id = f"{int(time.time() * 1000)}-0"
    return Event(
        type=kind,
        ts=int(time.time() * 1000),
        topic=topic,
        msg_id=msg_id,
        index=n,
        email=f"r{n}@example.com",
        **extra,
    )


async def publish(redis: Any, events: list[Event]) -> list[str]:
    """XADD the events; their webhook-ids."""
    ids = []
    for e in events:
        ids.append(f"msg_0_{await redis.xadd(P.events, event_fields(e))}")
    return ids


async def test_every_event_arrives_signed(
    redis: Any, api: TestClient[Any, Any], fanout: WebhookFanout, receiver: Receiver
) -> None:
    endpoint = await register(api, receiver)
    assert endpoint["secret"].startswith("whsec_")
    kinds = [EventType.SENT, EventType.DELIVERED, EventType.OPENED, EventType.GUARD_TRIPPED]
    bounce = event(EventType.BOUNCED, 9, bounce_type="Permanent", bounce_subtype="General")
    ids = await publish(redis, [event(k, i) for i, k in enumerate(kinds)] + [bounce])
    public = [ids[0], ids[1], ids[2], ids[4]]  # a guard trip is internal: never sent
    await until(lambda: _received(receiver), lambda got: got >= set(public), what="4 webhooks")
    assert set(receiver.received) == set(public)
    assert receiver.forged == 0
    assert [receiver.received[i]["type"] for i in public] == [
        "email.sent",
        "email.delivered",
        "email.opened",
        "email.bounced",
    ]
    data = receiver.received[ids[4]]["data"]
    assert data["bounce_type"] == "Permanent" and data["email"] == "r9@example.com"
    assert data["request_id"].endswith("_9")
    for h in receiver.headers:
        assert h["webhook-signature"].startswith("v1,")
        assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    await until(
        lambda: redis.xpending(P.events, WEBHOOKS_GROUP),
        lambda info: info["pending"] == 0,
        what="every event acknowledged by the webhooks group",
    )
    # Settled once the receiver's answer is back (the receiver records before answering).
    await until(lambda: redis.zcard(P.webhook_due), lambda n: n == 0, what="an empty queue")


async def _received(receiver: Receiver) -> set[str]:
    return set(receiver.received)


async def test_filters_by_event_and_topic(
    redis: Any, api: TestClient[Any, Any], fanout: WebhookFanout, receiver: Receiver
) -> None:
    await register(api, receiver, events=["bounced", "email.complained"], topic="news")
    ids = await publish(
        redis,
        [
            event(EventType.BOUNCED, 0, topic="news"),
            event(EventType.BOUNCED, 1, topic="other"),
            event(EventType.SENT, 2, topic="news"),
            event(EventType.COMPLAINED, 3, topic="news"),
        ],
    )
    await until(lambda: _received(receiver), lambda got: len(got) >= 2, what="2 webhooks")
    # Every later event is acknowledged: had one matched, it would be queued by then.
    await until(
        lambda: redis.xpending(P.events, WEBHOOKS_GROUP),
        lambda info: info["pending"] == 0,
        what="the events acknowledged",
    )
    await until(lambda: redis.zcard(P.webhook_due), lambda n: n == 0, what="an empty queue")
    assert set(receiver.received) == {ids[0], ids[3]}


async def test_receiver_down_for_five_seconds_loses_nothing(
    redis: Any, api: TestClient[Any, Any], fanout: WebhookFanout, receiver: Receiver
) -> None:
    await register(api, receiver)
    first = await publish(redis, [event(EventType.SENT, i) for i in range(10)])
    await until(lambda: _received(receiver), lambda got: got >= set(first), what="10 webhooks")
    receiver.down = True
    down_at = time.monotonic()
    during = await publish(redis, [event(EventType.DELIVERED, i) for i in range(40)])
    await until(lambda: _refused(receiver), lambda n: n >= 10, what="503 answers")
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))
    receiver.down = False
    after = await publish(redis, [event(EventType.OPENED, i) for i in range(10)])
    expected = set(first) | set(during) | set(after)
    await until(
        lambda: _received(receiver),
        lambda got: got >= expected,
        what="every event after the outage",
        within=40,
    )
    assert set(receiver.received) == expected
    assert receiver.forged == 0
    assert await redis.xlen(P.webhooks_dead) == 0
    retried = [h for h in receiver.headers if h["webhook-id"] in set(during)]
    assert len({h["webhook-id"] for h in retried}) == 40  # the id is the same on every attempt


async def _refused(receiver: Receiver) -> int:
    return receiver.refused


async def test_rotation_signs_with_both_secrets(
    redis: Any, api: TestClient[Any, Any], fanout: WebhookFanout, receiver: Receiver
) -> None:
    endpoint = await register(api, receiver)
    old = endpoint["secret"]
    res = await api.post(f"/v1/webhooks/{endpoint['id']}/rotate")
    assert res.status == 200
    rotated = await res.json()
    new = rotated["secret"]
    assert new != old and rotated["previous_secret_expires_at"]
    receiver.secrets = [new]
    (wid,) = await publish(redis, [event(EventType.SENT, 0)])
    await until(lambda: _received(receiver), lambda got: wid in got, what="the webhook")
    h = receiver.headers[-1]
    assert len(h["webhook-signature"].split(" ")) == 2
    body = receiver.received[wid]
    assert body["type"] == "email.sent"
    listing = await (await api.get("/v1/webhooks")).json()
    assert "secret" not in str(listing) and "whsec_" not in str(listing)


def test_forged_signature_fails_verification() -> None:
    secret, other = new_secret(), new_secret()
    body = b'{"type":"email.sent","timestamp":"2024-01-01T00:00:00.000Z","data":{}}'
    now = int(time.time())
    good = headers([secret], "msg_0_1-0", now, body)
    assert Webhook(secret).verify(body, good)["type"] == "email.sent"
    forged = headers([other], "msg_0_1-0", now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, forged)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"sent", b"bounced"), good)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**good, "webhook-id": "msg_0_2-0"})


async def test_a_big_pending_list_left_by_a_dead_consumer_is_reclaimed_in_one_round(
    redis: Any, wh_settings: Settings
) -> None:
    """Two and a half pages (BATCH_SIZE) pending with a consumer that died: one reclaim round
    takes them all, not one page per round."""
    await ensure_group(redis, P.events, WEBHOOKS_GROUP)
    count = BATCH_SIZE * 2 + BATCH_SIZE // 2
    pipe = redis.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(P.events, event_fields(event(EventType.SENT, i)))
    await pipe.execute()
    await redis.xreadgroup(WEBHOOKS_GROUP, "dead", {P.events: ">"}, count=count)
    consumer = WebhookFanout(stats_client(wh_settings), wh_settings, consumer="alive")
    try:
        assert await consumer.reclaim(P.events, min_idle_ms=0) == count
    finally:
        await consumer.client.aclose()
    owners = await redis.xpending_range(P.events, WEBHOOKS_GROUP, "-", "+", count + 1)
    assert len(owners) == count and {o["consumer"] for o in owners} == {"alive"}

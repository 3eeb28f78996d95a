"""The ingest HTTP API through aiohttp's TestServer, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import jwt

from sesflow.cli.embedded import free_port
from sesflow.common.connection import Redis
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.schema import decode_request

from support.ingestkit import read_events

RUST_BODY = {
    "messages": [
        {
            "topic_id": "newsletter_2024_01",
            "emails": ["user@example.com", "two@example.com", "USER@example.com"],
            "subject": "January Newsletter",
            "content": "Hello...",
        }
    ],
    "scheduled_at": "2024-01-01 09:00:00",
}
GO_BODY = {
    "messages": [
        {
            "topicId": "go-plan",
            "emails": ["a@example.com"],
            "subject": "Hi",
            "content": "<p>x</p>",
            "scheduledAt": "2030-01-01T09:00:00+09:00",
        },
        {"planId": "go-plan-2", "emails": ["b@example.com"], "subject": "S", "content": "C"},
    ]
}


async def entries(redis: Any, keys: Keys) -> list[tuple[str, dict[str, str]]]:
    return list(await redis.xrange(keys.requests))


async def test_rust_shape_is_accepted(http: Any, redis: Any, keys: Keys) -> None:
    resp = await http.post("/v1/messages", json=RUST_BODY)
    assert resp.status == 202
    answer = await resp.json()
    [(entry_id, fields)] = await entries(redis, keys)
    assert answer == {
        "count": 2,
        "messages": [
            {
                "id": entry_id,
                "topic_id": "newsletter_2024_01",
                "count": 2,
                "scheduled_at": "2024-01-01T09:00:00.000Z",
            }
        ],
    }
    message = decode_request(fields["message"])
    assert message.emails == ["user@example.com", "two@example.com"]
    assert message.scheduled_at == "2024-01-01T09:00:00.000Z"


async def test_go_shape_is_accepted(http: Any, redis: Any, keys: Keys) -> None:
    resp = await http.post("/v1/messages", json=GO_BODY)
    assert resp.status == 202
    answer = await resp.json()
    assert answer["count"] == 2
    written = await entries(redis, keys)
    assert [m["id"] for m in answer["messages"]] == [entry_id for entry_id, _ in written]
    topics = [decode_request(f["message"]).topic_id for _, f in written]
    assert topics == ["go-plan", "go-plan-2"]
    assert answer["messages"][0]["scheduled_at"] == "2030-01-01T00:00:00.000Z"


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{oops", "invalid_json"),
    (b"", "invalid_json"),
    (b'"text"', "invalid_type"),
    (b'{"messages": {}}', "invalid_type"),
    (
        b'{"messages": [{"topic_id": "t", "emails": [], "subject": "s", "content": "c"}]}',
        "no_recipients",
    ),
    (
        b'{"messages": [{"topic_id": "t", "emails": ["a@x.io", "bad"], "subject": "s",'
        b' "content": "c"}]}',
        "invalid_addresses",
    ),
    (
        b'{"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": ["s"],'
        b' "content": "c"}]}',
        "invalid_type",
    ),
    (
        b'{"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c"},'
        b' {"topic_id": "t", "emails": ["a@x.io"], "subject": "", "content": "c"}]}',
        "invalid_subject",
    ),
]


async def test_bad_input_is_a_400_and_nothing_is_written(http: Any, redis: Any, keys: Keys) -> None:
    for raw, error in BAD_BODIES:
        resp = await http.post(
            "/v1/messages", data=raw, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, raw
        body = await resp.json()
        assert body["error"] == error, raw
        assert body["detail"]
    assert await redis.exists(keys.requests) == 0


async def test_invalid_addresses_are_listed(http: Any) -> None:
    body = {
        "messages": [
            {"topic_id": "t", "emails": ["ok@x.io", "x@", "@y"], "subject": "s", "content": "c"}
        ]
    }
    resp = await http.post("/v1/messages", json=body)
    detail = (await resp.json())["detail"]
    assert resp.status == 400
    assert "x@" in detail and "@y" in detail and "ok@x.io" not in detail


async def test_oversize_body_is_413(
    api_client: Any, make_settings: Any, redis: Any, keys: Keys
) -> None:
    async with api_client(make_settings(MAX_REQUEST_BYTES=1000)) as http:
        body = {
            "messages": [
                {"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "x" * 2000}
            ]
        }
        resp = await http.post("/v1/messages", json=body)
        assert resp.status == 413
        assert (await resp.json())["error"] == "too_large"

        async def chunks() -> Any:  # no Content-Length: the limit still holds
            for _ in range(10):
                yield b"x" * 500

        resp = await http.post("/v1/messages", data=chunks())
        assert resp.status == 413
    assert await redis.exists(keys.requests) == 0


async def test_unknown_route_and_method_are_json(http: Any) -> None:
    resp = await http.get("/v1/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await http.get("/v1/messages")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_health_is_public(api_client: Any, make_settings: Any) -> None:
    async with api_client(make_settings(API_KEY="ingest-test-api-key")) as http:
        resp = await http.get("/health")
        assert resp.status == 200


async def test_api_key_and_jwt(api_client: Any, make_settings: Any) -> None:
    settings = make_settings(
        API_KEY="ingest-secret-api-key", JWT_SECRET="a-jwt-secret-of-at-least-32-bytes!"
    )
    async with api_client(settings) as http:
        assert (await http.post("/v1/messages", json=GO_BODY)).status == 401
        wrong = await http.post("/v1/messages", json=GO_BODY, headers={"x-api-key": "nope"})
        assert wrong.status == 401
        ok = await http.post(
            "/v1/messages", json=GO_BODY, headers={"x-api-key": "ingest-secret-api-key"}
        )
        assert ok.status == 202
        token = jwt.encode(
            {"sub": "client", "exp": int(time.time()) + 60},
            "a-jwt-secret-of-at-least-32-bytes!",
            algorithm="HS256",
        )
        ok = await http.post(
            "/v1/messages", json=GO_BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status == 202
        forged = jwt.encode(
            {"sub": "client"}, "another-secret-of-at-least-32-bytes", algorithm="HS256"
        )
        resp = await http.delete("/v1/topics/t", headers={"Authorization": f"Bearer {forged}"})
        assert resp.status == 401
        # A token that never expires is refused, as the Rust service's validation did.
        endless = jwt.encode({"sub": "client"}, "a-jwt-secret-of-at-least-32-bytes!", "HS256")
        resp = await http.delete("/v1/topics/t", headers={"Authorization": f"Bearer {endless}"})
        assert resp.status == 401
        assert (await http.get("/v1/suppressions")).status == 401


async def test_idempotency_key_replays_the_first_answer(http: Any, redis: Any, keys: Keys) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await http.post("/v1/messages", json=GO_BODY, headers=headers)
    second = await http.post("/v1/messages", json=GO_BODY, headers=headers)
    assert first.status == second.status == 202
    assert await first.json() == await second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(await entries(redis, keys)) == 2  # two message objects, enqueued once
    ttl = await redis.ttl(keys.idempotency("order-42"))
    assert 86_000 < ttl <= 86_400

    changed = await http.post("/v1/messages", json=RUST_BODY, headers=headers)
    assert changed.status == 409
    assert (await changed.json())["error"] == "idempotency_conflict"
    assert len(await entries(redis, keys)) == 2


async def test_concurrent_requests_with_one_key_enqueue_once(
    http: Any, redis: Any, keys: Keys
) -> None:
    headers = {"Idempotency-Key": "race"}
    replies = await asyncio.gather(
        *(http.post("/v1/messages", json=GO_BODY, headers=headers) for _ in range(8))
    )
    statuses = sorted(r.status for r in replies)
    assert statuses.count(202) >= 1
    assert set(statuses) <= {202, 409}
    assert len(await entries(redis, keys)) == 2


async def test_bad_idempotency_key_is_400(http: Any) -> None:
    resp = await http.post("/v1/messages", json=GO_BODY, headers={"Idempotency-Key": "x" * 300})
    assert resp.status == 400


async def test_delete_topic_removes_scheduled_chunks(
    http: Any, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    past = int(time.time() * 1000) - 1000
    chunks = {f"{past}-0:0": "a@x.io\nb@x.io", f"{past}-0:2": "c@x.io"}
    await redis.zadd(p.schedule, dict.fromkeys(chunks, past + 3_600_000))
    await redis.hset(p.schedule_data, mapping=chunks)
    await redis.sadd(p.schedule_topic("promo"), *chunks)
    resp = await http.delete("/v1/topics/promo")
    assert resp.status == 200
    answer = await resp.json()
    assert answer["topic_id"] == "promo" and answer["stopped"] == 3
    assert abs(answer["stopped_at"] - time.time() * 1000) < 5000
    assert await redis.zcard(p.schedule) == 0
    assert int(await redis.get(p.stop("promo"))) == answer["stopped_at"]
    assert [(e.type, e.n) for e in await read_events(redis, p)] == [("stopped", 3)]


async def test_delete_unknown_topic_is_200_with_nothing_stopped(
    http: Any, redis: Any, keys: Keys
) -> None:
    resp = await http.delete("/v1/topics/never-seen")
    assert resp.status == 200
    assert (await resp.json())["stopped"] == 0


async def test_delete_topic_writes_the_stop_in_every_partition(
    api_client: Any, make_settings: Any, redis: Any
) -> None:
    keys = Keys("sesflow", 3)
    async with api_client(make_settings(SEND_PARTITIONS=3)) as http:
        resp = await http.delete("/v1/topics/t1")
        assert resp.status == 200
    assert [await redis.exists(p.stop("t1")) for p in keys.partitions] == [1, 1, 1]


async def test_delete_topic_rejects_a_bad_topic(http: Any) -> None:
    resp = await http.delete("/v1/topics/" + "t" * 201)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_topic"


async def test_suppression_api(http: Any) -> None:
    assert (await http.get("/v1/suppressions/a@x.io")).status == 404
    resp = await http.put("/v1/suppressions/A@x.io", json={"reason": "manual", "detail": "asked"})
    assert resp.status == 200
    assert (await resp.json())["email"] == "a@x.io"
    assert (await http.put("/v1/suppressions/b@x.io")).status == 200  # body optional
    got = await (await http.get("/v1/suppressions/a@x.io")).json()
    assert (got["reason"], got["detail"]) == ("manual", "asked")

    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        page = await (await http.get(f"/v1/suppressions?limit=1&cursor={cursor}")).json()
        seen += [item["email"] for item in page["items"]]
        assert page["total"] == 2
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == ["a@x.io", "b@x.io"]

    assert (await http.delete("/v1/suppressions/a@x.io")).status == 200
    assert (await http.delete("/v1/suppressions/a@x.io")).status == 404
    assert (await http.put("/v1/suppressions/not-an-address")).status == 400
    assert (await http.put("/v1/suppressions/c@x.io", data=b"{bad")).status == 400
    assert (await http.put("/v1/suppressions/c@x.io", json={"reason": 5})).status == 400
    assert (await http.get("/v1/suppressions?limit=0")).status == 400
    assert (await http.get("/v1/suppressions?cursor=abc")).status == 400


async def test_suppression_scopes_in_the_api(http: Any) -> None:
    """An address shows its global entry and its list unsubscribes; DELETE takes one scope or
    every one; the answers keep their older fields."""
    assert (await http.put("/v1/suppressions/s@x.io?list=Newsletter")).status == 200
    resp = await http.put("/v1/suppressions/s@x.io", json={"list": "offers", "detail": "asked"})
    shown = await resp.json()
    assert (shown["email"], shown["reason"], shown["global"]) == ("s@x.io", "unsubscribe", False)
    assert sorted(shown["scopes"]["lists"]) == ["newsletter", "offers"]
    assert shown["scopes"]["global"] is None
    await http.put("/v1/suppressions/s@x.io", json={"reason": "complaint"})
    got = await (await http.get("/v1/suppressions/s@x.io")).json()
    assert (got["reason"], got["global"], got["scopes"]["global"]["reason"]) == (
        "complaint",
        True,
        "complaint",
    )
    page = await (await http.get("/v1/suppressions")).json()
    assert [(i["email"], sorted(i["lists"])) for i in page["items"]] == [
        ("s@x.io", ["newsletter", "offers"])
    ]
    lists_page = await (await http.get("/v1/suppressions?scope=lists")).json()
    assert [i["email"] for i in lists_page["items"]] == ["s@x.io"] and lists_page["total"] == 1

    resp = await http.delete("/v1/suppressions/s@x.io?list=offers")
    assert (await resp.json())["scopes"] == ["list:offers"]
    assert (await http.delete("/v1/suppressions/s@x.io?list=offers")).status == 404
    resp = await http.delete("/v1/suppressions/s@x.io?scope=global")
    assert (await resp.json())["scopes"] == ["global"]
    got = await (await http.get("/v1/suppressions/s@x.io")).json()
    assert (got["global"], list(got["scopes"]["lists"])) == (False, ["newsletter"])
    resp = await http.delete("/v1/suppressions/s@x.io")
    assert (await resp.json())["scopes"] == ["list:newsletter"]
    assert (await http.get("/v1/suppressions/s@x.io")).status == 404

    for bad in ("/v1/suppressions/s@x.io?list=a%20b", "/v1/suppressions?scope=other"):
        resp = await (http.get(bad) if "scope=" in bad else http.delete(bad))
        assert resp.status == 400
    assert (await http.put("/v1/suppressions/s@x.io", json={"list": 5})).status == 400


async def test_a_message_names_a_valid_list(http: Any) -> None:
    body = {"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c"}
    ok = await http.post("/v1/messages", json={"messages": [{**body, "list": "News"}]})
    assert ok.status == 202
    for bad in ("*", "two words", 5):
        resp = await http.post("/v1/messages", json={"messages": [{**body, "list": bad}]})
        assert resp.status == 400
        assert (await resp.json())["error"] in ("invalid_list", "invalid_type")


async def test_redis_down_is_503_with_retry_after(api_client: Any, make_settings: Any) -> None:
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with api_client(settings) as http:
        for method, path, body in [
            ("POST", "/v1/messages", GO_BODY),
            ("DELETE", "/v1/topics/t", None),
            ("GET", "/v1/suppressions", None),
        ]:
            resp = await http.request(method, path, json=body)
            assert resp.status == 503, path
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"] == "unavailable"
        # bad input is still a 400: validation needs no Redis
        resp = await http.post("/v1/messages", data=b"{oops")
        assert resp.status == 400


async def test_idempotency_key_is_released_when_redis_fails_midway(
    http: Any, redis: Any, keys: Keys, monkeypatch: Any
) -> None:
    from sesflow.ingest.idempotency import IdempotencyStore

    async def broken(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("redis went away")

    monkeypatch.setattr(IdempotencyStore, "commit", broken)
    resp = await http.post("/v1/messages", json=GO_BODY, headers={"Idempotency-Key": "k1"})
    assert resp.status == 503
    assert await redis.exists(keys.idempotency("k1")) == 0
    monkeypatch.undo()
    resp = await http.post("/v1/messages", json=GO_BODY, headers={"Idempotency-Key": "k1"})
    assert resp.status == 202
    assert json.loads(await redis.get(keys.idempotency("k1")))["b"]["count"] == 2


async def test_an_idempotency_key_freed_mid_claim_is_claimed_not_assumed(
    redis: Any, keys: Keys
) -> None:
    """SET NX lost to a placeholder that was then released: the next try must own the key."""
    from sesflow.ingest.idempotency import Claim, IdempotencyStore

    class Racing:
        def __init__(self) -> None:
            self.sets = 0

        async def set(self, *args: Any, **kwargs: Any) -> bool:
            self.sets += 1
            return self.sets > 1  # the first SET NX loses the race

        async def get(self, key: str) -> None:
            return None  # ... and the winner released the key before our GET

        def register_script(self, source: str) -> None:
            return None

    racing = Racing()  # the three commands the store uses, not a whole client
    store = IdempotencyStore(cast(Redis, racing), 60)
    assert isinstance(await store.begin("k", "digest"), Claim)
    assert racing.sets == 2

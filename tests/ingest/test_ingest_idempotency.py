"""Idempotency-Key: the final write happens only while the request still owns its placeholder
(enqueue_once.lua), and the placeholder is kept alive while the request is in progress."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from sesflow.common import scripts
from sesflow.common.errors import InputError
from sesflow.common.keys import Keys
from sesflow.ingest.idempotency import Claim, IdempotencyStore, Prior

BODY = {
    "messages": [
        {"topic_id": "a", "emails": ["a@example.com"], "subject": "s", "content": "c"},
        {"topic_id": "b", "emails": ["b@example.com"], "subject": "s", "content": "c"},
    ]
}


async def test_a_request_whose_key_expired_and_was_claimed_does_not_enqueue_again(
    http: Any, redis: Any, keys: Keys, monkeypatch: Any
) -> None:
    """First request: claims the key, then stalls past the placeholder's life; a retry claims
    the key and enqueues. The first must not enqueue a second time."""
    record_key = keys.idempotency("slow")
    original_begin = IdempotencyStore.begin
    retry: dict[str, Any] = {}

    async def stalled_begin(self: IdempotencyStore, key: str, digest: str) -> Any:
        claimed = await original_begin(self, key, digest)
        if not retry:
            retry["started"] = True
            await redis.delete(record_key)  # the placeholder expired while we stalled
            resp = await http.post("/v1/messages", json=BODY, headers={"Idempotency-Key": "slow"})
            retry["status"], retry["answer"] = resp.status, await resp.json()
        return claimed

    monkeypatch.setattr(IdempotencyStore, "begin", stalled_begin)
    first = await http.post("/v1/messages", json=BODY, headers={"Idempotency-Key": "slow"})
    assert retry["status"] == 202
    assert await redis.xlen(keys.requests) == 2  # once: two message objects
    assert first.status == 202
    assert await first.json() == retry["answer"]  # the retry's answer, replayed
    assert first.headers["Idempotent-Replayed"] == "true"
    stored = msgspec.json.decode(await redis.get(record_key))
    assert stored["b"] == retry["answer"]


@pytest.fixture
def store(redis: Any) -> IdempotencyStore:
    return IdempotencyStore(redis, 3600)


async def claim(store: IdempotencyStore, key: str, digest: str = "h") -> Claim:
    claimed = await store.begin(key, digest)
    assert isinstance(claimed, Claim)
    return claimed


async def test_commit_writes_nothing_once_another_request_owns_the_key(
    store: IdempotencyStore, redis: Any, keys: Keys
) -> None:
    key = keys.idempotency("k")
    first = await claim(store, key)
    await redis.delete(key)  # expired
    second = await claim(store, key)
    assert first.placeholder != second.placeholder  # same body, yet told apart by the token
    with pytest.raises(InputError) as caught:  # the second is still in progress
        await store.commit(first, keys.requests, "message", [b"{}"], 202, {"n": 1})
    assert caught.value.status == 409
    assert await redis.exists(keys.requests) == 0
    await store.release(first)  # must not free the second's placeholder
    assert await redis.get(key) == second.placeholder.decode()

    ids = await store.commit(second, keys.requests, "message", [b"{}", b"{}"], 202, {"n": 2})
    assert isinstance(ids, list) and len(ids) == 2
    replay = await store.commit(first, keys.requests, "message", [b"{}"], 202, {"n": 1})
    assert replay == Prior(status=202, answer={"n": 2})
    assert await redis.xlen(keys.requests) == 2
    assert 3500 < await redis.ttl(key) <= 3600


async def test_keep_alive_refreshes_only_our_placeholder(
    store: IdempotencyStore, redis: Any, keys: Keys
) -> None:
    key = keys.idempotency("alive")
    claimed = await claim(store, key)
    await redis.pexpire(key, 300)
    async with store.keep_alive(claimed, every=0.05):
        await asyncio.sleep(0.6)
        assert await redis.ttl(key) > 30  # refreshed to PENDING_TTL, not expired
        await redis.set(key, b"someone else's", px=300)
        await asyncio.sleep(0.6)
    assert await redis.exists(key) == 0  # theirs was left to expire, not refreshed


async def test_enqueue_once_lua(redis: Any, keys: Keys) -> None:
    script = scripts.register(redis, "enqueue_once")
    key = keys.idempotency("lua")
    await redis.set(key, "mine")
    args = ["theirs", "record", 60, "message", "m1", "m2"]
    assert await script(keys=[keys.requests, key], args=args) == ["lost"]
    assert await redis.exists(keys.requests) == 0
    reply = await script(keys=[keys.requests, key], args=["mine", *args[1:]])
    assert reply[0] == "ok" and len(reply) == 3
    assert [f["message"] for _, f in await redis.xrange(keys.requests)] == ["m1", "m2"]
    assert await redis.get(key) == "record"
    assert 0 < await redis.ttl(key) <= 60


async def test_idem_own_lua(redis: Any, keys: Keys) -> None:
    script = scripts.register(redis, "idem_own")
    key = keys.idempotency("own")
    await redis.set(key, "mine", ex=5)
    assert await script(keys=[key], args=["theirs", 100]) == 0
    assert await redis.ttl(key) <= 5
    assert await script(keys=[key], args=["mine", 100]) == 1
    assert await redis.ttl(key) > 5
    assert await script(keys=[key], args=["theirs", 0]) == 0
    assert await redis.exists(key) == 1
    assert await script(keys=[key], args=["mine", 0]) == 1
    assert await redis.exists(key) == 0
    assert await script(keys=[key], args=["mine", 100]) == 0  # gone: nothing to refresh

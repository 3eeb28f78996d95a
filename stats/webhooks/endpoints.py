"""Webhook endpoints, stored in one Redis hash (`keys.webhook_endpoints`: id -> JSON).

An endpoint has one current secret and, for WEBHOOK_ROTATION_GRACE after a rotation, the
previous one: both sign meanwhile. Secrets are shown once, when created or rotated, and never
in a listing. A disabled endpoint gets no new deliveries; its pending ones are dead-lettered
(replayable once it is enabled again). Updates of one endpoint are WATCH transactions, so a
concurrent rotate and disable do not undo each other.

`EndpointCache` keeps the deliverer from reading the registry at every claim: it reads it again
after CACHE_TTL_S, or at once after a change made through any `Registry` of this process (the
API's, the deliverer's own). A change made through another stats replica reaches it within
CACHE_TTL_S; what would drop or dead-letter a delivery (a deleted or disabled endpoint) is read
again from Redis first, never decided on the cache alone.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
from redis.exceptions import WatchError

from sesflow.common.connection import Redis
from sesflow.common.keys import Keys
from sesflow.stats.webhooks.signing import new_secret
from sesflow.stats.webhooks.vocabulary import ALL, iso_time

WATCH_ATTEMPTS = 10
CACHE_TTL_S = 1.0

# Bumped by every change made through a Registry of this process: caches see it at once.
_generation = 0


def _changed() -> None:
    global _generation  # one process-wide counter, by design
    _generation += 1


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    expires_ms: int = 0  # 0: the current one


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    url: str
    events: tuple[str, ...]
    topic: str = ""
    description: str = ""
    created_ms: int = 0
    secrets: tuple[Secret, ...] = ()
    disabled_ms: int = 0
    disabled_reason: str = ""

    def wants(self, name: str, topic: str) -> bool:
        if self.disabled_ms or (self.topic and self.topic != topic):
            return False
        return ALL in self.events or name in self.events

    def signing_secrets(self, now_ms: int) -> list[str]:
        return [s.value for s in self.secrets if not s.expires_ms or s.expires_ms > now_ms]

    def view(self) -> dict[str, Any]:
        """What the API shows (never a secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "topic": self.topic or None,
            "description": self.description,
            "created_at": iso_time(self.created_ms),
            "disabled": bool(self.disabled_ms),
            "disabled_at": iso_time(self.disabled_ms) if self.disabled_ms else None,
            "disabled_reason": self.disabled_reason or None,
        }


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Endpoint)


def new_id() -> str:
    return "ep_" + secrets.token_hex(12)


def decode(raw: str) -> Endpoint | None:
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Registry:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.webhook_endpoints
        self.failing_key = keys.webhook_failing
        self._decoded: dict[str, Endpoint | None] = {}  # the last read, by stored JSON

    async def all(self) -> dict[str, Endpoint]:
        """Every endpoint (one HGETALL; only JSON that changed since the last read is decoded)."""
        raw = cast(dict[str, str], await self.client.hgetall(self.key))
        known = self._decoded
        self._decoded = {v: known[v] if v in known else decode(v) for v in raw.values()}
        found = {eid: self._decoded[value] for eid, value in raw.items()}
        return {eid: ep for eid, ep in found.items() if ep is not None}

    async def get(self, endpoint_id: str) -> Endpoint | None:
        raw = await self.client.hget(self.key, endpoint_id)
        return decode(str(raw)) if raw is not None else None

    async def create(
        self, url: str, events: tuple[str, ...], topic: str, description: str, now_ms: int
    ) -> Endpoint:
        endpoint = Endpoint(
            id=new_id(),
            url=url,
            events=events,
            topic=topic,
            description=description,
            created_ms=now_ms,
            secrets=(Secret(value=new_secret()),),
        )
        await self.client.hset(self.key, endpoint.id, _encoder.encode(endpoint))
        _changed()
        return endpoint

    async def delete(self, endpoint_id: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.key, endpoint_id)
        pipe.hdel(self.failing_key, endpoint_id)
        deleted, _ = await pipe.execute()
        _changed()
        return bool(deleted)

    async def rotate(self, endpoint_id: str, now_ms: int, grace_s: float) -> Endpoint | None:
        """A new current secret; the previous one signs too until `grace_s` from now (an
        older previous one is dropped)."""

        def change(ep: Endpoint) -> Endpoint:
            current = [s for s in ep.secrets if not s.expires_ms][:1]
            previous = [
                Secret(value=s.value, expires_ms=now_ms + int(grace_s * 1000)) for s in current
            ]
            kept = tuple(previous) if grace_s > 0 else ()
            return msgspec.structs.replace(ep, secrets=(Secret(value=new_secret()), *kept))

        return await self.update(endpoint_id, change)

    async def disable(self, endpoint_id: str, now_ms: int, reason: str) -> bool:
        """True when this call disabled it (not when it was disabled already)."""
        was: list[int] = []

        def change(ep: Endpoint) -> Endpoint:
            was[:] = [ep.disabled_ms]
            if ep.disabled_ms:
                return ep
            return msgspec.structs.replace(ep, disabled_ms=now_ms, disabled_reason=reason)

        changed = await self.update(endpoint_id, change)
        return changed is not None and not was[0]

    async def set_disabled(self, endpoint_id: str, now_ms: int, reason: str) -> Endpoint | None:
        def change(ep: Endpoint) -> Endpoint:
            return msgspec.structs.replace(
                ep, disabled_ms=now_ms if reason else 0, disabled_reason=reason
            )

        endpoint = await self.update(endpoint_id, change)
        if endpoint is not None and not reason:
            await self.client.hdel(self.failing_key, endpoint_id)
        return endpoint

    async def update(self, endpoint_id: str, change: Any) -> Endpoint | None:
        for _ in range(WATCH_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    raw = await pipe.hget(self.key, endpoint_id)
                    endpoint = decode(str(raw)) if raw is not None else None
                    if endpoint is None:
                        return None
                    changed = change(endpoint)
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    pipe.hset(self.key, endpoint_id, _encoder.encode(changed))
                    await pipe.execute()
                    _changed()
                    return cast(Endpoint, changed)
                except WatchError:
                    continue
        raise RuntimeError(f"endpoint {endpoint_id} kept changing")

    # --- the failure clock behind disabling ---------------------------------------------------

    async def failed(self, endpoint_id: str, now_ms: int) -> int:
        """Note a failure; returns since when the endpoint has been failing (ms)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self.failing_key, endpoint_id, now_ms)
        pipe.hget(self.failing_key, endpoint_id)
        _, since = await pipe.execute()
        return int(since or now_ms)

    async def succeeded(self, endpoint_id: str) -> None:
        await self.client.hdel(self.failing_key, endpoint_id)


class EndpointCache:
    """The registry's endpoints, read again after `ttl_s` or a change made in this process."""

    def __init__(
        self,
        registry: Registry,
        ttl_s: float = CACHE_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self.endpoints: dict[str, Endpoint] = {}
        self._read_at: float | None = None
        self._generation = -1

    async def all(self) -> dict[str, Endpoint]:
        now = self.monotonic()
        fresh = self._read_at is not None and now - self._read_at < self.ttl_s
        if not fresh or self._generation != _generation:
            generation = _generation  # a change during the read makes the next call read again
            self.endpoints = await self.registry.all()
            self._read_at, self._generation = now, generation
        return self.endpoints

    def forget(self) -> None:
        """Read the registry again at the next call."""
        self._read_at = None

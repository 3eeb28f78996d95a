"""`Idempotency-Key` for POST /v1/messages: a retried request is answered, not enqueued again.

One record per key, `keys.idempotency(key)`, JSON `{"h": body hash, "s": status, "b": answer}`:

1. `begin` claims the key with SET NX: a placeholder holding the hash and a random token of
   this request (`t`), living `PENDING_TTL`, so two concurrent requests with one key cannot
   both enqueue. While the request is in progress, `keep_alive` refreshes the placeholder (only
   while it is still ours), so a slow request does not lose its key to a retry;
2. `commit` writes the messages and the record in ONE script (`enqueue_once.lua`, the record
   shares the hash tag of `requests`), and only while the key still holds this request's own
   placeholder: if it expired and another request claimed the key, that one does the work and
   this one writes nothing (409, or the other's answer). Otherwise the record then holds the
   answer without the message ids, for IDEMPOTENCY_TTL. Enqueued and recorded happen together
   or not at all;
3. `finish` stores the complete answer, ids included.

A retry meeting a placeholder gets 409 "in progress"; when the first attempt died before its
write, the placeholder expires after `PENDING_TTL` and a retry proceeds (nothing was
enqueued). If it died between the write and `finish`, the retry gets the answer without ids:
the messages were enqueued once, which is what matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from sesflow.common.connection import Redis
from sesflow.common.errors import InputError
from sesflow.common.scripts import register

PENDING_TTL = 60  # seconds a placeholder lives unless refreshed: far above one request's time
REFRESH_INTERVAL_S = PENDING_TTL / 3
MAX_KEY_CHARS = 255


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    h: str
    s: int = 0
    b: Any = None
    t: str = ""  # the token of the request that holds the placeholder


@dataclass(frozen=True, slots=True)
class Claim:
    """This request owns the key: `placeholder` is the exact value it SET there."""

    record_key: str
    digest: str
    placeholder: bytes


@dataclass(frozen=True, slots=True)
class Prior:
    """What a previous request with the same key left: replay it, or refuse."""

    status: int
    answer: Any


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise InputError(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1..{MAX_KEY_CHARS} printable ASCII characters",
        )
    return key


def prior_outcome(raw: str | None, digest: str) -> Prior | None:
    """None when the key is free; otherwise the answer to replay (or an InputError to raise)."""
    if raw is None:
        return None
    try:
        record = msgspec.json.decode(raw, type=Record)
    except (msgspec.DecodeError, msgspec.ValidationError):
        record = Record(h="")
    if record.h != digest:
        raise InputError(
            "idempotency_conflict",
            "this Idempotency-Key was used with a different request body",
            status=409,
        )
    if record.b is None:
        raise in_progress()
    return Prior(status=record.s, answer=record.b)


CLAIM_TRIES = 3


class IdempotencyStore:
    def __init__(self, client: Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._enqueue_once = register(client, "enqueue_once")
        self._own = register(client, "idem_own")

    async def begin(self, record_key: str, digest: str) -> Claim | Prior:
        """Claim the key, or return the earlier answer; raises InputError(409)."""
        placeholder = msgspec.json.encode(Record(h=digest, t=os.urandom(16).hex()))
        for _ in range(CLAIM_TRIES):
            if await self.client.set(record_key, placeholder, nx=True, ex=PENDING_TTL):
                return Claim(record_key, digest, placeholder)
            raw = cast(str | None, await self.client.get(record_key))
            if raw is not None:
                return self._replay(raw, digest)
            # Released or expired between SET NX and GET: the key is free again; claim it
            # rather than go on without owning it (a concurrent twin would enqueue too).
        raise in_progress()

    def _replay(self, raw: str, digest: str) -> Prior:
        prior = prior_outcome(raw, digest)
        if prior is None:  # only for a record that vanished, which the callers rule out
            raise in_progress()
        return prior

    @contextlib.asynccontextmanager
    async def keep_alive(
        self, claim: Claim, every: float = REFRESH_INTERVAL_S
    ) -> AsyncIterator[None]:
        """Refresh the placeholder while the body runs, so it outlives a slow request."""
        task = asyncio.create_task(self._refresh(claim, every))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh(self, claim: Claim, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            args = [claim.placeholder, PENDING_TTL]
            try:
                if not await self._own(keys=[claim.record_key], args=args):
                    return  # lost already: the write will see it and write nothing
            except Exception:  # not fatal: the write checks ownership anyway
                continue

    async def commit(
        self, claim: Claim, stream: str, field: str, entries: list[bytes], status: int, answer: Any
    ) -> list[str] | Prior:
        """XADD `entries` to `stream` and store the record, in one script, only while the key
        holds our placeholder. Returns the entry ids; or, when the key was lost to another
        request (which enqueues instead of this one), what that request left: its answer to
        replay, or InputError(409) while it is in progress."""
        record = msgspec.json.encode(Record(h=claim.digest, s=status, b=answer))
        reply = await self._enqueue_once(
            keys=[stream, claim.record_key],
            args=[claim.placeholder, record, self.ttl, field, *entries],
        )
        if reply[0] == "ok":
            return [str(entry_id) for entry_id in reply[1:]]
        raw = cast(str | None, await self.client.get(claim.record_key))
        if raw is None:
            raise in_progress()
        return self._replay(raw, claim.digest)

    async def finish(self, claim: Claim, status: int, answer: Any) -> None:
        record = msgspec.json.encode(Record(h=claim.digest, s=status, b=answer))
        await self.client.set(claim.record_key, record, xx=True, keepttl=True)

    async def release(self, claim: Claim) -> None:
        """Best effort after a failure before the write: free the key for a retry (only if the
        placeholder is still ours)."""
        await self._own(keys=[claim.record_key], args=[claim.placeholder, 0])


def in_progress() -> InputError:
    return InputError(
        "idempotency_in_progress",
        "a request with this Idempotency-Key is being processed; retry shortly",
        status=409,
    )

"""`Idempotency-Key` for POST /v1/messages: a retried request is answered, not enqueued again.

One record per key, `keys.idempotency(key)`, JSON `{"h": body hash, "s": status, "b": answer}`:

1. `begin` claims the key with SET NX (a short-lived placeholder holding only the hash), so two
   concurrent requests with one key cannot both enqueue;
2. the caller writes its entries and `commit` in ONE transaction (the record shares the hash tag
   of `requests`): the record then holds the answer without the message ids, for
   IDEMPOTENCY_TTL. Enqueued and recorded happen together or not at all;
3. `finish` stores the complete answer, ids included.

A retry meeting a placeholder gets 409 "in progress"; when the first attempt died before its
transaction, the placeholder expires after `PENDING_TTL` and a retry proceeds (nothing was
enqueued). If it died between the transaction and `finish`, the retry gets the answer without
ids: the messages were enqueued once, which is what matters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from common.errors import InputError

PENDING_TTL = 60  # seconds a placeholder may live: far above the time one request takes
MAX_KEY_CHARS = 255


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    h: str
    s: int = 0
    b: Any = None


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
        raise InputError(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is being processed; retry shortly",
            status=409,
        )
    return Prior(status=record.s, answer=record.b)


CLAIM_TRIES = 3


class IdempotencyStore:
    def __init__(self, client: Any, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    async def begin(self, record_key: str, digest: str) -> Prior | None:
        """Claim the key (None), or return the earlier answer; raises InputError(409)."""
        placeholder = msgspec.json.encode(Record(h=digest))
        for _ in range(CLAIM_TRIES):
            if await self.client.set(record_key, placeholder, nx=True, ex=PENDING_TTL):
                return None
            raw = await self.client.get(record_key)
            if raw is not None:
                return prior_outcome(raw, digest)
            # Released or expired between SET NX and GET: the key is free again; claim it
            # rather than go on without owning it (a concurrent twin would enqueue too).
        raise InputError(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is being processed; retry shortly",
            status=409,
        )

    def commit(self, pipe: Any, record_key: str, digest: str, status: int, answer: Any) -> None:
        """Queue the record on the caller's transaction, beside the entries it writes."""
        pipe.set(record_key, msgspec.json.encode(Record(h=digest, s=status, b=answer)), ex=self.ttl)

    async def finish(self, record_key: str, digest: str, status: int, answer: Any) -> None:
        record = msgspec.json.encode(Record(h=digest, s=status, b=answer))
        await self.client.set(record_key, record, xx=True, keepttl=True)

    async def release(self, record_key: str, digest: str) -> None:
        """Best effort after a failure before the transaction: free the key for a retry."""
        if prior_outcome_is_placeholder(await self.client.get(record_key), digest):
            await self.client.delete(record_key)


def prior_outcome_is_placeholder(raw: str | None, digest: str) -> bool:
    if raw is None:
        return False
    try:
        record = msgspec.json.decode(raw, type=Record)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return record.h == digest and record.b is None

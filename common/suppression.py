"""The suppression list: addresses that must never get mail again (hard bounce, complaint,
unsubscribe, or added by hand). One Redis hash, address -> JSON entry, keyed by
`common.addresses.address_key` (lower-cased, a non-ASCII domain in punycode: `a@ü.example` and
`a@xn--tda.example` are one entry)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from sesflow.common.addresses import address_key
from sesflow.common.connection import Redis
from sesflow.common.keys import Keys


class Suppression(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    email: str
    reason: str  # bounce | complaint | unsubscribe | manual
    ts: int  # epoch ms
    detail: str = ""
    topic: str = ""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Suppression)


def normalise(email: str) -> str:
    return address_key(email)


def entry(email: str, reason: str, detail: str = "", topic: str = "") -> Suppression:
    return Suppression(
        email=normalise(email),
        reason=reason,
        ts=int(time.time() * 1000),
        detail=detail,
        topic=topic,
    )


def encode(item: Suppression) -> bytes:
    return _enc.encode(item)


def decode(email: str, raw: str | bytes | None) -> Suppression | None:
    if raw is None:
        return None
    try:
        return _dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Suppression(email=email, reason="unknown", ts=0, detail=str(raw)[:200])


class SuppressionList:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.suppressed

    async def add(self, item: Suppression, pipe: Any = None) -> None:
        """Suppress an address; the first reason recorded is kept (HSETNX)."""
        await (pipe or self.client).hsetnx(self.key, item.email, encode(item))

    async def put(self, item: Suppression) -> None:
        """Suppress or overwrite the entry (PUT from the API)."""
        await self.client.hset(self.key, item.email, encode(item))

    async def remove(self, email: str) -> bool:
        return bool(await self.client.hdel(self.key, normalise(email)))

    async def get(self, email: str) -> Suppression | None:
        email = normalise(email)
        return decode(email, await self.client.hget(self.key, email))

    async def suppressed_among(self, emails: Sequence[str]) -> set[str]:
        """The subset of `emails` (as given) that is suppressed: one HMGET."""
        if not emails:
            return set()
        found = await self.client.hmget(self.key, [normalise(e) for e in emails])
        return {email for email, raw in zip(emails, found, strict=True) if raw is not None}

    async def page(self, cursor: int = 0, count: int = 100) -> tuple[int, list[Suppression]]:
        """One page of the list (HSCAN): returns the next cursor (0 at the end) and entries."""
        next_cursor, found = await self.client.hscan(self.key, cursor=cursor, count=count)
        items = cast(dict[str, str], found)
        return int(next_cursor), [
            s for email, raw in items.items() if (s := decode(email, raw)) is not None
        ]

    async def count(self) -> int:
        return int(await self.client.hlen(self.key))

"""The suppression list, in two scopes.

Global: addresses that must never get mail again (hard bounce, complaint, added by hand, or
imported from SES's account-level list). One Redis hash, address -> JSON entry
(`keys.suppressed`), keyed by `common.addresses.address_key` (lower-cased, a non-ASCII domain in
punycode: `a@ü.example` and `a@xn--tda.example` are one entry); every mail, transactional or bulk,
skips them.

Per list: one-click unsubscribes, each from one mailing list (`common.mailing_lists`). One Redis
hash (`keys.unsubscribed`), address -> JSON object of list -> `ListScope`, so a batch of jobs is
checked with one HMGET of each hash. Bulk mail skips an address that left its list, or every list
(`ALL_LISTS`, what a global unsubscribe of an older version becomes: `migrate_unsubscribes`);
transactional mail never looks at list unsubscribes. Every change of one address's lists is one
Lua script (`scope_add`, `scope_remove`, `scope_migrate`), so two at once never lose either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from sesflow.common.addresses import address_key
from sesflow.common.connection import Redis
from sesflow.common.keys import Keys
from sesflow.common.mailing_lists import ALL_LISTS
from sesflow.common.scripts import register


class Suppression(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    email: str
    # bounce | complaint | manual (or a reason given by hand); unsubscribe only in entries of
    # older versions, moved to the every-list scope by `migrate_unsubscribes`
    reason: str
    ts: int  # epoch ms
    detail: str = ""
    topic: str = ""


class ListScope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One list unsubscribe of an address (the list is its key in the address's object)."""

    ts: int = 0  # epoch ms
    topic: str = ""
    detail: str = ""
    migrated: bool = False  # a global unsubscribe of an older version, moved to "*"


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Suppression)
_lists_dec = msgspec.json.Decoder(dict[str, ListScope])


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


def decode_lists(raw: str | bytes | None) -> dict[str, ListScope]:
    """An address's list unsubscribes; {} when none (or unreadable: never stops mail by
    accident, and the global list still holds every hard bounce and complaint)."""
    if raw is None:
        return {}
    try:
        return _lists_dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def leaves(raw_lists: str | bytes | None, scope: str) -> bool:
    """Whether an address's stored list unsubscribes stop mail of list `scope` ("" = mail that
    ignores list unsubscribes: transactional)."""
    if not scope or raw_lists is None:
        return False
    lists = decode_lists(raw_lists)
    return scope in lists or ALL_LISTS in lists


MIGRATE_PAGE = 500


class SuppressionList:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.suppressed
        self.lists_key = keys.unsubscribed
        self.keys = keys
        self._scope_add = register(client, "scope_add")
        self._scope_remove = register(client, "scope_remove")
        self._scope_migrate = register(client, "scope_migrate")

    async def add(self, item: Suppression, pipe: Any = None) -> None:
        """Suppress an address; the first reason recorded is kept (HSETNX)."""
        await (pipe or self.client).hsetnx(self.key, item.email, encode(item))

    async def put(self, item: Suppression) -> None:
        """Suppress or overwrite the entry (PUT from the API)."""
        await self.client.hset(self.key, item.email, encode(item))

    async def remove(self, email: str) -> bool:
        """Lift the global entry, and forget the address's recent soft bounces with it: an
        operator who lifts a `soft_bounce` suppression means to try the address again, not to
        have its next soft bounce suppress it at once. (The history goes first: it is in another
        slot, and a failure between the two leaves the address suppressed, never half-lifted.)"""
        address = normalise(email)
        await self.client.delete(self.keys.soft_bounces(address))
        return bool(await self.client.hdel(self.key, address))

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

    # --- list scopes ----------------------------------------------------------------------

    async def unsubscribe(
        self, email: str, list_name: str, topic: str = "", detail: str = ""
    ) -> bool:
        """The address leaves one list (or every list, `ALL_LISTS`); the first time is kept.
        True when it is recorded now."""
        item = ListScope(ts=int(time.time() * 1000), topic=topic, detail=detail)
        reply = await self._scope_add(
            keys=[self.lists_key], args=[normalise(email), list_name, _enc.encode(item)]
        )
        return bool(int(reply))

    async def resubscribe(self, email: str, list_name: str = "") -> int:
        """Remove the address's unsubscribe from one list, or from every list it left ("");
        returns how many were removed."""
        reply = await self._scope_remove(keys=[self.lists_key], args=[normalise(email), list_name])
        return int(reply)

    async def lists_of(self, email: str) -> dict[str, ListScope]:
        return decode_lists(await self.client.hget(self.lists_key, normalise(email)))

    async def scopes_of_many(self, emails: Sequence[str]) -> list[dict[str, ListScope]]:
        if not emails:
            return []
        found = await self.client.hmget(self.lists_key, [normalise(e) for e in emails])
        return [decode_lists(raw) for raw in found]

    async def suppressed_for(self, emails: Sequence[str], scope: str) -> set[str]:
        """The subset of `emails` (as given) that mail of list `scope` must skip: the globally
        suppressed, and when `scope` is a list ("" for transactional mail: none), those who
        left it or every list. One round trip (both hashes share a slot)."""
        if not emails:
            return set()
        fields = [normalise(e) for e in emails]
        if not scope:
            return await self.suppressed_among(emails)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.key, fields)
        pipe.hmget(self.lists_key, fields)
        found, lists = await pipe.execute()
        return {
            email
            for email, raw, left in zip(emails, found, lists, strict=True)
            if raw is not None or leaves(left, scope)
        }

    async def lists_page(
        self, cursor: int = 0, count: int = 100
    ) -> tuple[int, list[tuple[str, dict[str, ListScope]]]]:
        """One page of the list unsubscribes (HSCAN): next cursor (0 at the end), entries."""
        next_cursor, found = await self.client.hscan(self.lists_key, cursor=cursor, count=count)
        items = cast(dict[str, str], found)
        return int(next_cursor), [(email, decode_lists(raw)) for email, raw in items.items()]

    async def lists_count(self) -> int:
        return int(await self.client.hlen(self.lists_key))

    async def migrate_unsubscribes(self, page: int = MIGRATE_PAGE) -> int:
        """Move every global suppression with reason "unsubscribe" (an older version's one-click
        unsubscribe) to the every-list scope: bulk mail of every list keeps skipping it, as
        before, and transactional mail reaches it again. Idempotent; returns how many moved.
        Each page is one script call, so an address is never in neither scope."""
        moved, cursor = 0, 0
        while True:
            cursor, found = await self.client.hscan(self.key, cursor=cursor, count=page)
            candidates = [
                str(email)
                for email, raw in cast(dict[str, str], found).items()
                if b"unsubscribe" in (raw if isinstance(raw, bytes) else str(raw).encode())
            ]
            if candidates:
                reply = await self._scope_migrate(keys=[self.key, self.lists_key], args=candidates)
                moved += int(reply)
            if not cursor:
                return moved

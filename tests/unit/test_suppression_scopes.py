"""Suppression scopes against a real Redis: list unsubscribes (scope_add.lua, scope_remove.lua),
which mail they stop, and the migration of older global unsubscribes (scope_migrate.lua)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from sesflow.common.errors import InputError
from sesflow.common.keys import Keys
from sesflow.common.mailing_lists import ALL_LISTS, check_list, default_list, list_id, list_of
from sesflow.common.schema import MessageContent
from sesflow.common.suppression import SuppressionList, entry, leaves

KEYS = Keys("scopes")


@pytest.fixture
async def suppressions(redis: Any) -> SuppressionList:
    await redis.delete(KEYS.suppressed, KEYS.unsubscribed)
    return SuppressionList(redis, KEYS)


async def test_a_list_unsubscribe_stops_that_lists_bulk_mail_only(
    suppressions: SuppressionList,
) -> None:
    assert await suppressions.unsubscribe("Reader@Example.org", "newsletter", topic="june")
    assert not await suppressions.unsubscribe("reader@example.org", "newsletter")  # first kept
    emails = ["Reader@Example.org", "other@example.org"]
    assert await suppressions.suppressed_for(emails, "newsletter") == {"Reader@Example.org"}
    assert await suppressions.suppressed_for(emails, "offers") == set()
    assert await suppressions.suppressed_for(emails, "") == set()  # transactional
    assert await suppressions.get("reader@example.org") is None
    assert await suppressions.count() == 0
    lists = await suppressions.lists_of("READER@example.org")
    assert list(lists) == ["newsletter"] and lists["newsletter"].topic == "june"


async def test_global_suppressions_stop_every_mail(suppressions: SuppressionList) -> None:
    await suppressions.add(entry("hard@example.org", "bounce"))
    await suppressions.add(entry("angry@example.org", "complaint"))
    emails = ["hard@example.org", "angry@example.org", "fine@example.org"]
    for scope in ("", "newsletter"):
        found = await suppressions.suppressed_for(emails, scope)
        assert found == {"hard@example.org", "angry@example.org"}


async def test_the_every_list_scope_stops_all_bulk_mail(suppressions: SuppressionList) -> None:
    await suppressions.unsubscribe("all@example.org", ALL_LISTS)
    assert await suppressions.suppressed_for(["all@example.org"], "anything") == {"all@example.org"}
    assert await suppressions.suppressed_for(["all@example.org"], "") == set()


async def test_scopes_are_removed_one_at_a_time_or_all(suppressions: SuppressionList) -> None:
    for name in ("a", "b", "c"):
        await suppressions.unsubscribe("x@example.org", name)
    assert await suppressions.resubscribe("x@example.org", "b") == 1
    assert await suppressions.resubscribe("x@example.org", "b") == 0
    assert sorted(await suppressions.lists_of("x@example.org")) == ["a", "c"]
    assert await suppressions.resubscribe("x@example.org") == 2
    assert await suppressions.lists_of("x@example.org") == {}
    assert await suppressions.lists_count() == 0  # an address with no list left is gone


async def test_concurrent_unsubscribes_of_one_address_all_land(
    suppressions: SuppressionList,
) -> None:
    names = [f"list-{n}" for n in range(40)]
    await asyncio.gather(*(suppressions.unsubscribe("busy@example.org", n) for n in names))
    assert sorted(await suppressions.lists_of("busy@example.org")) == sorted(names)


async def test_an_unreadable_lists_entry_never_stops_mail(
    suppressions: SuppressionList, redis: Any
) -> None:
    await redis.hset(KEYS.unsubscribed, "odd@example.org", "not json")
    assert await suppressions.suppressed_for(["odd@example.org"], "newsletter") == set()
    assert not leaves(b"not json", "newsletter")
    assert await suppressions.resubscribe("odd@example.org", "newsletter") == 0
    assert await suppressions.resubscribe("odd@example.org") == 1


async def test_migration_moves_only_unsubscribes_and_is_idempotent(
    suppressions: SuppressionList, redis: Any
) -> None:
    await suppressions.add(entry("old@example.org", "unsubscribe", topic="spring"))
    await suppressions.add(entry("bounced@example.org", "bounce", detail="unsubscribe me"))
    await suppressions.add(entry("manual@example.org", "manual"))
    await suppressions.unsubscribe("both@example.org", "newsletter")
    await suppressions.add(entry("both@example.org", "unsubscribe"))
    for n in range(1200):  # more than one HSCAN page
        await suppressions.put(entry(f"bulk{n}@example.org", "unsubscribe"))

    assert await suppressions.migrate_unsubscribes(page=100) == 1202
    assert await suppressions.migrate_unsubscribes(page=100) == 0  # nothing left to move

    assert await suppressions.get("old@example.org") is None
    [(name, scope)] = (await suppressions.lists_of("old@example.org")).items()
    assert (name, scope.topic, scope.migrated) == (ALL_LISTS, "spring", True)
    assert sorted(await suppressions.lists_of("both@example.org")) == [ALL_LISTS, "newsletter"]
    # Hard bounces and hand-made entries stay global, even with "unsubscribe" in a detail.
    assert (await suppressions.get("bounced@example.org")) is not None
    assert (await suppressions.get("manual@example.org")) is not None
    assert await suppressions.count() == 2
    # What the migration promises: bulk mail still skips the address, transactional does not.
    assert await suppressions.suppressed_for(["old@example.org"], "any") == {"old@example.org"}
    assert await suppressions.suppressed_for(["old@example.org"], "") == set()


def test_list_names() -> None:
    assert check_list(" NewsLetter ") == "newsletter"
    for bad in ("", "*", "-x", "a b", "x" * 65, "a.b", "ü"):
        with pytest.raises(InputError):
            check_list(bad)
    assert default_list("Spring-2024") == "spring-2024"
    odd = default_list("Spring sale/2024 ✓")
    assert odd.startswith("topic-") and len(odd) == 22 and odd == default_list("Spring sale/2024 ✓")
    assert default_list("a b") != default_list("a-b")
    assert list_of("june", None) == "june" and list_of("june", "Offers") == "offers"
    assert list_id("news", "Mail.Example.COM.") == "<news.mail.example.com>"


def test_a_message_stored_before_lists_has_its_topics_list() -> None:
    fields = {"topic": "june", "subject": "s", "html": "h"}
    old = MessageContent.from_hash("1-0", fields)
    assert (old.list_name, old.unsubscribe_scope) == ("june", "june")
    new = MessageContent.from_hash("1-0", {**fields, "list": "offers", "lane": "transactional"})
    assert (new.list_name, new.unsubscribe_scope) == ("offers", "")
    assert MessageContent.from_hash("1-0", new.to_hash()) == msgspec.structs.replace(new)

"""The archive writer against a real Redis, on SQLite and on Postgres: what it stores, exactly
once under redelivery, through a database outage, and past poison entries."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sesflow.common.errors import ArchiveUnavailable
from sesflow.common.keys import ARCHIVE_GROUP, STATS_GROUP, Keys
from sesflow.common.schema import Event, EventType
from sesflow.common.settings import Settings
from sesflow.stats.archive.db import Database, Session

from support.archivekit import archived, event_count, recipient, running, unarchived, writer
from support.statskit import add_events
from support.until import until

MSG = "1700000000000-0"
T0 = 1_700_000_000_000


def campaign() -> list[Event]:
    base: dict[str, Any] = {"topic": "news", "msg_id": MSG}
    return [
        Event(type=EventType.ACCEPTED, ts=T0, n=3, **base),
        *(
            Event(type=EventType.SENT, ts=T0 + 10 + i, index=i, email=f"r{i}@example.com",
                  ses_id=f"ses-{i}", **base)
            for i in range(3)
        ),
        Event(type=EventType.DELIVERED, ts=T0 + 100, index=0, email="r0@example.com",
              ses_id="ses-0", detail="250 ok", **base),
        Event(type=EventType.OPENED, ts=T0 + 200, index=0, **base),  # a pixel: no address
        Event(type=EventType.BOUNCED, ts=T0 + 150, index=1, email="r1@example.com",
              ses_id="ses-1", bounce_type="Permanent", bounce_subtype="General",
              detail="550 no such user", **base),
        Event(type=EventType.CLICKED, ts=T0 + 300, index=0, url="https://example.com/a", **base),
        Event(type=EventType.DELIVERY_DELAYED, ts=T0 + 120, index=2, email="r2@example.com",
              detail="MailboxFull", **base),
    ]  # fmt: skip


async def test_a_campaign_is_archived(
    redis: Any, archive_settings: Settings, archive_db: Database
) -> None:
    keys = Keys()
    content = {"subject": "Hello", "html": "x", "lane": "transactional", "scheduled_ms": T0 + 5}
    await redis.hset(keys.partition(0).message(MSG), mapping=content)
    await add_events(redis, keys, *campaign())
    async with running(writer(archive_settings, archive_db)):
        await archived(redis, keys)
    assert await event_count(archive_db) == 9
    message = await archive_db.fetchone("SELECT * FROM messages WHERE msg_id = $1", MSG)
    assert message == {
        "msg_id": MSG, "topic": "news", "subject": "Hello", "lane": "transactional", "total": 3,
        "accepted_at_ms": T0, "scheduled_at_ms": T0 + 5,
    }  # fmt: skip
    r0 = await recipient(archive_db, MSG, 0)
    assert (r0["state"], r0["ses_id"], r0["email"]) == ("clicked", "ses-0", "r0@example.com")
    assert (r0["last_event"], r0["last_event_at_ms"], r0["sent_at_ms"]) == (
        "clicked",
        T0 + 300,
        T0 + 10,
    )
    r1 = await recipient(archive_db, MSG, 1)
    assert (r1["state"], r1["last_event"]) == ("bounced", "bounced")
    r2 = await recipient(archive_db, MSG, 2)
    assert (r2["state"], r2["last_event_at_ms"]) == ("delayed", T0 + 120)
    # The open came without an address; the archive gives it the recipient's.
    timeline = await archive_db.fetch(
        "SELECT type, url FROM events WHERE email = $1 ORDER BY ts_ms DESC", "r0@example.com"
    )
    assert [row["type"] for row in timeline] == ["clicked", "opened", "delivered", "sent"]
    assert timeline[0]["url"] == "https://example.com/a"
    bounce = await archive_db.fetchone("SELECT * FROM events WHERE type = $1", "bounced")
    assert bounce is not None
    assert (bounce["bounce_type"], bounce["bounce_subtype"], bounce["detail"]) == (
        "Permanent", "General", "550 no such user",
    )  # fmt: skip
    delayed = await archive_db.fetchone("SELECT detail FROM events WHERE type = $1", "delayed")
    assert delayed == {"detail": "MailboxFull"}
    topic = await archive_db.fetchone("SELECT * FROM topics WHERE topic = $1", "news")
    assert topic == {"topic": "news", "first_at_ms": T0, "last_at_ms": T0 + 300, "messages": 1}


async def test_redelivery_archives_nothing_twice(
    redis: Any, archive_settings: Settings, archive_db: Database
) -> None:
    """A writer that commits and dies before its XACK: the next one stores the batch again,
    which changes nothing."""
    keys = Keys()
    await add_events(redis, keys, *campaign())
    first = writer(archive_settings, archive_db, consumer="dies")

    async def no_ack(*_: Any) -> None:
        raise ConnectionError("killed before the XACK")

    first.acknowledge = no_ack  # type: ignore[method-assign,assignment]
    async with running(first):
        await until(lambda: event_count(archive_db), lambda n: n == 9, what="a first commit")
    assert await unarchived(redis, keys)  # nothing acknowledged
    before = await archive_db.fetch("SELECT * FROM recipients ORDER BY idx")
    topic_before = await archive_db.fetch("SELECT * FROM topics")
    async with running(writer(archive_settings, archive_db, consumer="next")) as second:
        await second.reclaim(keys.partition(0).events, min_idle_ms=0)
        await archived(redis, keys)
    assert await event_count(archive_db) == 9
    assert await archive_db.fetch("SELECT * FROM recipients ORDER BY idx") == before
    assert await archive_db.fetch("SELECT * FROM topics") == topic_before


class Outage:
    """The archive database, down while `down` is set (every transaction fails)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.down = True
        self.attempts = 0

    async def tried(self) -> int:
        return self.attempts

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        self.attempts += 1
        if self.down:
            raise ArchiveUnavailable("connection refused")
        async with self.db.transaction() as tx:
            yield tx


async def test_a_database_outage_stalls_without_loss(
    redis: Any, archive_settings: Settings, archive_db: Database
) -> None:
    keys = Keys()
    await add_events(redis, keys, *campaign())
    outage = Outage(archive_db)
    archive = writer(archive_settings, archive_db)
    archive.db = outage  # type: ignore[assignment]
    async with running(archive):
        await until(outage.tried, lambda n: n >= 3, what="retries while down")
        assert await unarchived(redis, keys)  # nothing acknowledged
        assert await event_count(archive_db) == 0
        outage.down = False
        await archived(redis, keys)
    assert await event_count(archive_db) == 9
    assert archive.metrics.database_errors >= 3


async def test_a_stop_during_an_outage_leaves_the_entries_pending(
    redis: Any, archive_settings: Settings, archive_db: Database
) -> None:
    keys = Keys()
    await add_events(redis, keys, *campaign())
    outage = Outage(archive_db)
    archive = writer(archive_settings, archive_db)
    archive.db = outage  # type: ignore[assignment]
    async with running(archive):
        await until(outage.tried, lambda n: n >= 1, what="a first attempt")
    groups = await redis.xinfo_groups(keys.partition(0).events)
    assert next(g for g in groups if g["name"] == ARCHIVE_GROUP)["pending"] == 9
    async with running(writer(archive_settings, archive_db)) as again:
        await again.reclaim(keys.partition(0).events, min_idle_ms=0)
        await archived(redis, keys)
    assert await event_count(archive_db) == 9


async def test_poison_entries_do_not_stop_the_archive(
    redis: Any, archive_settings: Settings, archive_db: Database
) -> None:
    keys = Keys()
    p = keys.partition(0)
    await redis.xadd(p.events, {"e": "{not json"})
    await redis.xadd(p.events, {"other": "field"})
    await add_events(
        redis,
        keys,
        Event(type=EventType.SENT, ts=T0, msg_id=MSG, index=2**40, email="a@example.com"),
        Event(type=EventType.SENT, ts=T0, msg_id=MSG, index=1, email="nul\x00@example.com",
              detail="caf\u00e9\x00"),
    )  # fmt: skip
    async with running(writer(archive_settings, archive_db)) as archive:
        await archived(redis, keys)
    # Stats dead-letters the undecodable ones; the archive only its own (an index it cannot
    # store), once.
    dead = await redis.xrange(p.events_dead)
    assert [fields["reason"] for _, fields in dead] == [
        "archive: recipient index out of range: 1099511627776"
    ]
    assert archive.metrics.skipped == 2
    row = await recipient(archive_db, MSG, 1)
    assert row["email"] == "nul@example.com"
    stored = await archive_db.fetchone("SELECT detail FROM events WHERE idx = $1", 1)
    assert stored == {"detail": "caf\u00e9"}  # Postgres refuses a NUL in text


async def test_with_the_archive_off_no_group_is_created(redis: Any, make_settings: Any) -> None:
    import asyncio

    from sesflow.stats.archive.run import run_archive

    settings = make_settings(ARCHIVE="off")
    keys = Keys()
    await add_events(redis, keys, *campaign())
    stop = asyncio.Event()
    task = asyncio.create_task(run_archive(settings, stop))
    await asyncio.sleep(0.2)
    stop.set()
    await task
    groups = await redis.xinfo_groups(keys.partition(0).events)
    assert ARCHIVE_GROUP not in {g["name"] for g in groups}
    assert STATS_GROUP not in {g["name"] for g in groups}


@pytest.mark.parametrize("partitions", [3])
async def test_every_partition_is_archived(
    redis: Any, make_settings: Any, archive_url: str, partitions: int
) -> None:
    from sesflow.stats.archive.db import connect_archive

    from support.archivekit import FAST

    settings = make_settings(ARCHIVE_URL=archive_url, SEND_PARTITIONS=partitions, **FAST)
    keys = Keys(partitions=partitions)
    for n in range(partitions):
        await add_events(redis, keys, *campaign(), partition=n)
    db = await connect_archive(settings)
    try:
        async with running(writer(settings, db)):
            await archived(redis, keys)
        assert await event_count(db) == 9 * partitions
        rows = await db.fetch("SELECT partition, count(*) AS n FROM events GROUP BY partition")
        assert sorted((r["partition"], r["n"]) for r in rows) == [(n, 9) for n in range(partitions)]
    finally:
        await db.close()


async def test_postgres_connections_killed_under_the_writer(
    redis: Any, make_settings: Any, postgres_server: Any
) -> None:
    """Postgres drops every connection of the archive (a failover, a restart): the writer's
    next batch fails, is retried on new connections, and nothing is lost or doubled."""
    import asyncpg

    from sesflow.stats.archive.db import connect_archive

    from support.archivekit import FAST

    url = await postgres_server.new_database()
    settings = make_settings(ARCHIVE_URL=url, **FAST)
    keys = Keys()
    db = await connect_archive(settings)
    try:
        async with running(writer(settings, db)):
            await add_events(redis, keys, *campaign())
            await archived(redis, keys)
            admin = await asyncpg.connect(postgres_server.url())
            try:
                killed = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    url.rsplit("/", 1)[1],
                )
            finally:
                await admin.close()
            assert killed, "no archive connection to kill"
            await add_events(redis, keys, *campaign())
            await archived(redis, keys)
        assert await event_count(db) == 18
    finally:
        await db.close()

"""What the archive tests share: a writer like the stats process makes it, waiting until the
`archive` group has stored and acknowledged everything, reading the archive back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sesflow.common.keys import ARCHIVE_GROUP, Keys
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import stats_client
from sesflow.stats.archive.db import Database, Row
from sesflow.stats.archive.writer import ArchiveWriter

from support.statskit import undrained
from support.until import until

FAST = {"STATS_FLUSH_INTERVAL": "0.05", "RECLAIM_IDLE": "0.3", "SHUTDOWN_GRACE": "3"}


async def unarchived(redis: Any, keys: Keys, group: str = ARCHIVE_GROUP) -> list[str]:
    """The events streams `group` has not read and acknowledged to their last entry."""
    return await undrained(redis, keys, group)


async def archived(redis: Any, keys: Keys, within: float = 10.0) -> None:
    """Wait until every entry of every events stream is archived and acknowledged."""
    await until(
        lambda: unarchived(redis, keys),
        lambda behind: not behind,
        what="the archive to drain every events stream",
        within=within,
    )


def writer(settings: Settings, db: Database, consumer: str | None = None) -> ArchiveWriter:
    return ArchiveWriter(stats_client(settings), settings, db, consumer=consumer)


@contextlib.asynccontextmanager
async def running(consumer: ArchiveWriter) -> AsyncIterator[ArchiveWriter]:
    """Run `consumer` for the block; then stop it and close its client (not the database)."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        try:
            await task
        finally:
            await consumer.client.aclose()


async def recipient(db: Database, msg_id: str, idx: int) -> Row:
    row = await db.fetchone("SELECT * FROM recipients WHERE msg_id = $1 AND idx = $2", msg_id, idx)
    assert row is not None, f"no recipient row for {msg_id}/{idx}"
    return row


async def event_count(db: Database) -> int:
    row = await db.fetchone("SELECT count(*) AS n FROM events")
    assert row is not None
    return int(row["n"])

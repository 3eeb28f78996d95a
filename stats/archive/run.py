"""The archive writer's life in the stats process: connect (waiting for the database), migrate,
consume until `stop`, close. With ARCHIVE=off it only waits for `stop`: no group is created,
so the `events` streams never wait for an archive that does not run."""

from __future__ import annotations

import asyncio

from sesflow.common.consumer import sleep_or_stop
from sesflow.common.errors import ArchiveUnavailable
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import stats_client
from sesflow.stats.archive.db import Database, connect_archive
from sesflow.stats.archive.url import target
from sesflow.stats.archive.writer import ArchiveMetrics, ArchiveWriter

log = get_logger(__name__)

CONNECT_RETRY_S = 5.0


async def open_when_ready(settings: Settings, stop: asyncio.Event) -> Database | None:
    """The migrated archive, retried until the database answers; None at `stop`."""
    where = target(settings)  # ConfigError: the process cannot run
    while not stop.is_set():
        try:
            db = await connect_archive(settings)
        except ArchiveUnavailable as exc:
            log.warning("archive database unavailable", backend=where.backend, error=str(exc))
            await sleep_or_stop(stop, CONNECT_RETRY_S)
            continue
        log.info("archive ready", backend=where.backend, path=where.path or None)
        return db
    return None


async def run_archive(
    settings: Settings, stop: asyncio.Event, metrics: ArchiveMetrics | None = None
) -> None:
    if settings.archive != "on":
        await stop.wait()
        return
    db = await open_when_ready(settings, stop)
    if db is None:
        return
    client = stats_client(settings)
    try:
        writer = ArchiveWriter(client, settings, db)
        if metrics is not None:
            writer.metrics = metrics
        await writer.run(stop)
    finally:
        await client.aclose()
        await db.close()

"""`python -m sesflow.stats` / `sesflow serve stats`: the events consumer and the stats API in
one process."""

from __future__ import annotations

import asyncio

from sesflow.common.logs import get_logger
from sesflow.common.runtime import run_role, start_site, stop_on_signals
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import StatsAggregator, stats_client
from sesflow.stats.api import create_app
from sesflow.stats.archive.run import run_archive
from sesflow.stats.archive.writer import ArchiveMetrics
from sesflow.stats.webhooks.fanout import WebhookFanout

log = get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    client = stats_client(settings)
    aggregator = StatsAggregator(client, settings)
    consuming = asyncio.create_task(aggregator.run(stop), name="stats-consumer")
    # Off: no `webhooks` group at all (a group that exists must be consumed, or events never trim).
    webhooks = [
        asyncio.create_task(WebhookFanout(client, settings).run(stop), name="webhooks")
        for _ in range(settings.webhooks == "on")
    ]
    archive_metrics = ArchiveMetrics()
    archiving = asyncio.create_task(
        run_archive(settings, stop, archive_metrics), name="archive-writer"
    )
    runner = None
    try:
        app = create_app(
            settings, aggregator_metrics=aggregator.metrics, archive_metrics=archive_metrics
        )
        runner = await start_site(app, settings.bind_host, settings.stats_port)
        log.info("stats listening", host=settings.bind_host, port=settings.stats_port)
        stopping = asyncio.create_task(stop.wait())
        # The consumers only end on `stop`; if one ends otherwise it failed: stop the process.
        await asyncio.wait(
            [stopping, consuming, archiving, *webhooks], return_when=asyncio.FIRST_COMPLETED
        )
        stopping.cancel()
        log.info("stats stopping")
    finally:
        # Stop reading first and apply the batch in hand (within SHUTDOWN_GRACE), then stop
        # serving; the pool goes last.
        stop.set()
        try:
            await asyncio.gather(consuming, archiving, *webhooks)
        finally:
            if runner is not None:
                await runner.cleanup()
            await client.aclose()


def main() -> None:
    run_role("stats", run)


if __name__ == "__main__":
    main()

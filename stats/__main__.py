"""`python -m sesflow.stats` / `sesflow serve stats`: the events consumer and the stats API in
one process."""

from __future__ import annotations

import asyncio

from sesflow.common.logs import get_logger
from sesflow.common.runtime import run_role, start_site, stop_on_signals
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import StatsConsumer
from sesflow.stats.api import create_app

log = get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    consumer = StatsConsumer(settings)
    runner = None
    try:
        await consumer.start()
        app = create_app(settings, consumer_stats=consumer.stats)
        runner = await start_site(app, settings.bind_host, settings.stats_port)
        log.info("stats listening", host=settings.bind_host, port=settings.stats_port)
        await stop.wait()
        log.info("stats stopping")
    finally:
        # Stop reading first and apply the batch in hand, then stop serving.
        await consumer.close(settings.shutdown_grace)
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    run_role("stats", run)


if __name__ == "__main__":
    main()

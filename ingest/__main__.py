"""`python -m sesflow.ingest` / `sesflow serve ingest`: the API, the dispatcher and the
scheduler, one process.

SIGTERM or SIGINT sets `stop`: the API stops accepting, the dispatcher stops reading and lets the
entries in flight finish within SHUTDOWN_GRACE, the scheduler ends its tick, the pool is closed.
During a Redis outage nothing exits: the API answers 503, the loops wait and resume.
"""

from __future__ import annotations

import asyncio

from sesflow.common.consumer import consumer_client
from sesflow.common.keys import Keys
from sesflow.common.logs import get_logger
from sesflow.common.runtime import run_role, start_site, stop_on_signals
from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.ingest.scheduler import Scheduler

log = get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    keys = Keys(settings.redis_prefix, settings.send_partitions)
    client = consumer_client(settings)
    runner = None
    loops: list[asyncio.Task[None]] = []
    try:
        runner = await start_site(create_app(settings), settings.bind_host, settings.ingest_port)
        log.info("ingest listening", host=settings.bind_host, port=settings.ingest_port)
        loops = [
            asyncio.create_task(Dispatcher(client, settings, keys).run(stop)),
            asyncio.create_task(Scheduler(client, keys).run(stop)),
        ]
        stopping = asyncio.create_task(stop.wait())
        # The loops only end on `stop`; one that ends otherwise failed: stop the process.
        await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        stop.set()
        if runner is not None:
            await runner.cleanup()  # no new requests; the ones in flight complete
        # The dispatcher drains its entries within SHUTDOWN_GRACE; a loop's failure surfaces.
        try:
            await asyncio.gather(*loops)
        finally:
            await client.aclose()
            log.info("ingest stopped")


def main() -> None:
    run_role("ingest", run)


if __name__ == "__main__":
    main()

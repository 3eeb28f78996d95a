"""`python -m sesflow.tracker` / `sesflow serve tracker`: serve the tracker on
BIND_HOST:TRACKER_PORT."""

from __future__ import annotations

import asyncio

from sesflow.common.logs import get_logger
from sesflow.common.runtime import run_role, start_site, stop_on_signals
from sesflow.common.settings import Settings
from sesflow.tracker.app import create_app

log = get_logger(__name__)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT. A Redis outage does not stop the process: requests that need
    Redis answer 503 meanwhile, and the client reconnects on its own."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    runner = await start_site(create_app(settings), settings.bind_host, settings.tracker_port)
    log.info("tracker listening", host=settings.bind_host, port=settings.tracker_port)
    try:
        await stop.wait()
    finally:
        log.info("tracker stopping")
        await runner.cleanup()


def main() -> None:
    run_role("tracker", run)


if __name__ == "__main__":
    main()

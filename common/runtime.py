"""Process plumbing shared by every role: main(), signal handling, serving an aiohttp app."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from sesflow.common.errors import ConfigError
from sesflow.common.http import JsonAppRunner
from sesflow.common.logs import configure
from sesflow.common.sentry import init_sentry
from sesflow.common.settings import Settings, check_role, load_settings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_role(role: str, run: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """`main()` of a role: load settings once, set up logging and Sentry, run until stopped."""
    try:
        settings = load_settings()
        check_role(settings, role)
    except ConfigError as exc:
        print(f"sesflow {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure(settings, role)
    init_sentry(settings, role)
    asyncio.run(_until_done(run(settings)))


async def _until_done(work: Coroutine[Any, Any, None]) -> None:
    """`work`, then no more SIGTERM / SIGINT: once it has stopped, asyncio closes the loop's
    self-pipe before it removes its signal handlers, and a signal landing in between (Ctrl-C
    reaches every process of `sesflow up`, which also passes SIGTERM on) printed "Exception
    ignored when trying to write to the signal wakeup fd" with a traceback."""
    try:
        await work
    finally:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT only set `stop`: all the work of stopping happens in the main flow."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; the caller owns the runner and calls `runner.cleanup()`."""
    runner = JsonAppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner

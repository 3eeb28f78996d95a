"""One call to the stats API for an operator command: the URL it is at, the credentials the
settings hold, and a clear error when it refuses or cannot be reached."""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp

from sesflow.cli.output import Unreachable, auth_headers, fail, http_error, local_url
from sesflow.common.settings import Settings


class Refused(Exception):
    """Stats answered, but not with 200 (already reported on stderr)."""


def add_stats_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stats-url",
        metavar="URL",
        help="stats API base URL (default STATS_URL, else http://127.0.0.1:STATS_PORT)",
    )


def stats_base(settings: Settings, url: str | None) -> str:
    return (url or settings.stats_url or local_url(settings, settings.stats_port)).rstrip("/")


async def call_stats(
    http: aiohttp.ClientSession, settings: Settings, base: str, path: str, params: dict[str, str]
) -> Any:
    """The JSON answer of GET base+path; Refused after printing why, Unreachable when nothing
    answers."""
    try:
        async with http.get(f"{base}{path}", params=params, headers=auth_headers(settings)) as resp:
            if resp.status != 200:
                fail(await http_error(resp))
                raise Refused(path)
            return await resp.json()
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach the stats API at {base}: {exc or type(exc).__name__} "
            "(is `sesflow up` or the stats role running? --stats-url names another)"
        ) from exc


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_connect=5))

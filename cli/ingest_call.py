"""One call to the ingest API for an operator command: the URL it is at, the credentials the
settings hold, and a clear error when it refuses or cannot be reached."""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp

from sesflow.cli.output import Unreachable, auth_headers, fail, http_error, local_url
from sesflow.common.settings import Settings


class Refused(Exception):
    """Ingest answered, but not with 200 (already reported on stderr)."""


def add_ingest_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ingest-url",
        metavar="URL",
        help="ingest API base URL (default http://127.0.0.1:INGEST_PORT)",
    )


def ingest_base(settings: Settings, url: str | None) -> str:
    return (url or local_url(settings, settings.ingest_port)).rstrip("/")


async def call_ingest(settings: Settings, base: str, method: str, path: str, what: str) -> Any:
    """The JSON answer of `method base+path`; Refused after printing why, Unreachable when
    nothing answers."""
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, f"{base}{path}", headers=auth_headers(settings)) as resp,
        ):
            if resp.status != 200:
                fail(f"ingest refused to {what}: {await http_error(resp)}")
                raise Refused(what)
            return await resp.json()
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach the ingest API at {base}: {exc or type(exc).__name__} "
            "(is `sesflow up` or the ingest role running? --ingest-url names another)"
        ) from exc

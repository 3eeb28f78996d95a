"""One call to the ingest or stats API for an operator command: the URL it is at, the
credentials the settings hold, and a clear error when it refuses or cannot be reached."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from sesflow.cli.output import Unreachable, auth_headers, fail, http_error, local_url
from sesflow.common.settings import Settings


class Refused(Exception):
    """The API answered, but not with 200 (already reported on stderr)."""


@dataclass(frozen=True)
class RoleApi:
    """Where a role's API is: `--<role>-url`, else the setting that names it, else this host at
    the role's port."""

    role: str
    port: Callable[[Settings], int]
    configured: Callable[[Settings], str] | None = None  # e.g. STATS_URL
    configured_name: str = ""

    def add_url_option(self, parser: argparse.ArgumentParser) -> None:
        default = f"{self.configured_name}, else " if self.configured_name else ""
        parser.add_argument(
            f"--{self.role}-url",
            metavar="URL",
            help=f"{self.role} API base URL (default {default}http://127.0.0.1:"
            f"{self.role.upper()}_PORT)",
        )

    def base(self, settings: Settings, url: str | None) -> str:
        configured = self.configured(settings) if self.configured else ""
        return (url or configured or local_url(settings, self.port(settings))).rstrip("/")


INGEST = RoleApi("ingest", lambda s: s.ingest_port)
STATS = RoleApi("stats", lambda s: s.stats_port, lambda s: s.stats_url, "STATS_URL")


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_connect=5))


async def call_api(  # noqa: PLR0913 (where, what and how of one call, all needed)
    http: aiohttp.ClientSession,
    settings: Settings,
    api: RoleApi,
    base: str,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    what: str = "",
) -> Any:
    """The JSON answer of `method base+path`; Refused after printing why (`what` it was asked
    to do, when given), Unreachable when nothing answers."""
    try:
        async with http.request(
            method, f"{base}{path}", params=params, headers=auth_headers(settings)
        ) as resp:
            if resp.status != 200:
                why = await http_error(resp)
                fail(f"{api.role} refused to {what}: {why}" if what else why)
                raise Refused(what or path)
            return await resp.json()
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach the {api.role} API at {base}: {exc or type(exc).__name__} "
            f"(is `sesflow up` or the {api.role} role running? --{api.role}-url names another)"
        ) from exc


async def call_ingest(settings: Settings, base: str, method: str, path: str, what: str) -> Any:
    """One ingest call on a session of its own (an operator command makes one)."""
    async with session() as http:
        return await call_api(http, settings, INGEST, base, method, path, what=what)

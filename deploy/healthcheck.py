#!/usr/bin/env python3
"""Container health check: GET /health of the sesflow role running as PID 1.

Usage: sesflow-healthcheck [ROLE]. Without ROLE it is read from PID 1's command line
(`sesflow serve sender`, `python -m sesflow.stats`, ...). The port comes from the same settings
the role reads, so a changed INGEST_PORT or SENDER_METRICS_PORT needs no change here.
Exit 0 = healthy.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from sesflow.common.errors import ConfigError
from sesflow.common.settings import Settings, load_settings

ROLES = ("ingest", "sender", "tracker", "stats")


def role_from_cmdline(cmdline: bytes) -> str | None:
    """The first argument of a NUL-separated command line that names a role (`stats`, or
    `sesflow.stats` for `python -m`)."""
    for arg in cmdline.split(b"\0"):
        name = arg.decode(errors="replace").removeprefix("sesflow.")
        if name in ROLES:
            return name
    return None


def health_port(settings: Settings, role: str) -> int:
    return {
        "ingest": settings.ingest_port,
        "tracker": settings.tracker_port,
        "stats": settings.stats_port,
        "sender": settings.sender_metrics_port,
    }[role]


def health_url(settings: Settings, role: str) -> str:
    host = settings.bind_host
    if host in {"0.0.0.0", "::", ""}:
        host = "127.0.0.1"
    return f"http://{host}:{health_port(settings, role)}/health"


def main(argv: list[str] | None = None, cmdline_path: str = "/proc/1/cmdline") -> int:
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else role_from_cmdline(Path(cmdline_path).read_bytes())
    if role not in ROLES:
        print(f"sesflow-healthcheck: no sesflow role found (got {role!r})", file=sys.stderr)
        return 2
    try:
        settings = load_settings()  # the role's own view: environment over ./.env
    except ConfigError as exc:
        print(f"sesflow-healthcheck: {exc}", file=sys.stderr)
        return 1
    url = health_url(settings, role)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            healthy = bool(response.status == 200)
    except OSError as exc:
        print(f"sesflow-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())

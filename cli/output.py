"""What the operator commands share: the console, Redis and HTTP access with clear errors, and
small formatting helpers. Each command builds its own Console when it runs, so its output goes to
whatever stdout is at that moment (a terminal, a pipe, or a test's capture)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from rich.console import Console

from sesflow.cli.local_env import with_local_redis
from sesflow.common.connection import UNAVAILABLE, connect
from sesflow.common.errors import ConfigError, InputError
from sesflow.common.settings import Settings, load_settings

# Exit codes shared by the operator commands.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (check failed, nothing replayed...)
EXIT_USAGE = 2  # bad input or configuration
EXIT_UNREACHABLE = 3  # Redis or an HTTP service did not answer
EXIT_INTERRUPTED = 130

Formatter = argparse.RawDescriptionHelpFormatter


class Unreachable(Exception):
    """A service the command needs did not answer; the message says which and what to do."""


PIPE_WIDTH = 160


def console(stderr: bool = False) -> Console:
    """A terminal gets its own width; a pipe or a file gets whole rows (rich would assume 80)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, highlight=False, soft_wrap=False, width=width)


def fail(message: str, hint: str = "") -> None:
    err = console(stderr=True)
    err.print(f"[bold red]sesflow:[/] {message}")
    if hint:
        err.print(f"  hint: {hint}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def operator_settings() -> Settings:
    """Settings from the environment (and .env), with the Redis of a running `sesflow up`."""
    return with_local_redis(load_settings())


def open_redis(settings: Settings) -> Any:
    if not settings.redis_url:
        raise ConfigError(
            "REDIS_URL is not set and no `sesflow up` is running in this directory "
            f"(no {settings.data_dir}/up.env): set REDIS_URL or start `sesflow up`"
        )
    return connect(settings)


def local_url(settings: Settings, port: int) -> str:
    host = "127.0.0.1" if settings.bind_host in {"", "0.0.0.0", "::"} else settings.bind_host
    return f"http://{host}:{port}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """Credentials the ingest and stats APIs ask for: API_KEY, else a short-lived HS256 JWT."""
    if settings.api_key:
        return {"x-api-key": settings.api_key}
    if settings.jwt_secret:
        import jwt

        now = int(time.time())
        lifetime = int(min(3600, settings.jwt_max_age or 3600))  # within JWT_MAX_AGE
        claims: dict[str, object] = {"sub": "sesflow-cli", "iat": now, "exp": now + lifetime}
        if settings.jwt_audience:
            claims["aud"] = settings.jwt_audience
        if settings.jwt_issuer:
            claims["iss"] = settings.jwt_issuer
        token = jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}
    return {}


async def http_error(resp: aiohttp.ClientResponse) -> str:
    """`error: detail` of a sesflow 4xx/5xx JSON body, or the raw text."""
    text = await resp.text()
    try:
        body = json.loads(text)
        return f"{body['error']}: {body.get('detail', '')}".rstrip(": ")
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status}: {text[:300]}"


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine; bad input and unreachable services become a message and an
    exit code (2, 3)."""
    try:
        return asyncio.run(main())
    except InputError as exc:
        fail(exc.detail or exc.error)
        return EXIT_USAGE
    except Unreachable as exc:
        fail(str(exc))
        return EXIT_UNREACHABLE
    except UNAVAILABLE as exc:
        fail(
            f"cannot reach Redis: {exc}",
            "is REDIS_URL right, and is Redis running? (`sesflow check` tells more)",
        )
        return EXIT_UNREACHABLE


def age(ms: int, now_ms: int | None = None) -> str:
    """A short age like `42s`, `5m`, `3h`, `2d`."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def entry_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def when(ms: int) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h`, `7d`, `1w` (or plain seconds) -> seconds; ValueError otherwise."""
    text = text.strip().lower()
    unit = DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    value = float(number)  # raises ValueError
    if value < 0:
        raise ValueError("a duration cannot be negative")
    return value * (unit or 1)

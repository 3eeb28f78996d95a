"""aiohttp pieces every API shares: JSON errors, body limits, Redis-outage answers, auth, and
the health answers.

Every HTTP role serves two health paths, both public:

    GET /livez    liveness: the process answers HTTP. Never touches Redis, so a Redis outage
                  does not get every pod restarted (k8s livenessProbe).
    GET /health   readiness: also PINGs Redis (within HEALTH_PING_TIMEOUT); 503 when Redis does
                  not answer, so a role stuck on Redis is taken out of rotation and noticed.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import jwt
import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from common.connection import UNAVAILABLE
from common.errors import InputError, RedisUnavailable
from common.logs import get_logger
from common.settings import Settings

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, error: str, detail: str = "", headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": error, "detail": detail}, status=status, headers=headers)


def unavailable_response() -> web.Response:
    return error_response(
        503, "unavailable", "Redis is unavailable; retry later", headers={"Retry-After": "1"}
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error", "detail"}` JSON; Redis outages become 503 + Retry-After."""
    try:
        return await handler(request)
    except InputError as exc:
        return error_response(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or "")
    except RedisUnavailable:
        return unavailable_response()
    except UNAVAILABLE:
        return unavailable_response()
    except Exception:
        log.exception("unhandled error", path=request.path, method=request.method)
        return error_response(500, "internal", "unexpected error; it has been logged")


# Longest a body may take to arrive (10 MiB at ~1.4 Mbit/s): a client trickling bytes must not
# hold a connection and its buffer for ever.
BODY_READ_TIMEOUT = 60.0


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refusing more than `max_bytes` with 413 before reading it all, and a
    body that takes longer than BODY_READ_TIMEOUT to arrive with 408."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise InputError("too_large", f"body exceeds {max_bytes} bytes", status=413)
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise InputError("too_large", f"body exceeds {max_bytes} bytes", status=413)
    except TimeoutError:
        raise InputError(
            "body_timeout", f"the body did not arrive within {BODY_READ_TIMEOUT:g} s", status=408
        ) from None
    return bytes(body)


HEALTH_PATH = "/health"
LIVE_PATH = "/livez"
HEALTH_PATHS = (HEALTH_PATH, LIVE_PATH)
HEALTH_PING_TIMEOUT = 1.0


def auth_middleware(settings: Settings, public: Iterable[str] = HEALTH_PATHS) -> Any:
    """API_KEY (header x-api-key, the Go seed's) and/or JWT_SECRET (HS256 bearer, the Rust
    seed's). With neither set the API is open (only on loopback, unless ALLOW_UNAUTHENTICATED:
    see `check_role`). Either credential is enough when both are set."""
    public_paths = frozenset(public)
    api_key = settings.api_key.encode()
    jwt_secret = settings.jwt_secret

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (not api_key and not jwt_secret) or request.path in public_paths:
            return await handler(request)
        given = request.headers.get("x-api-key", "").encode()
        if api_key and given and hmac.compare_digest(given, api_key):
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        if jwt_secret and auth[:7].lower() == "bearer ":
            problem = token_problem(settings, auth[7:].strip())
            if problem:
                return error_response(401, "unauthorized", f"invalid token: {problem}")
            return await handler(request)
        return error_response(401, "unauthorized", "missing or invalid credentials")

    return middleware


def token_problem(settings: Settings, token: str) -> str | None:
    """Why a bearer token is refused, or None when it is valid. `exp` is required, as the Rust
    service's validation did: no token lives forever, nor longer than JWT_MAX_AGE from now.
    JWT_AUDIENCE / JWT_ISSUER, when set, must be the token's `aud` / `iss`."""
    required = ["exp"]
    if settings.jwt_audience:
        required.append("aud")
    if settings.jwt_issuer:
        required.append("iss")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            options={"require": required, "verify_aud": bool(settings.jwt_audience)},
        )
    except jwt.PyJWTError as exc:
        return str(exc)
    max_age = settings.jwt_max_age
    if max_age and float(claims["exp"]) > time.time() + max_age:
        return f"exp is more than JWT_MAX_AGE ({max_age:g} s) away; mint shorter-lived tokens"
    return None


async def live(_: web.Request) -> web.Response:
    """Liveness: answers as long as the process serves HTTP; no Redis."""
    return json_response({"status": "ok"})


async def redis_reachable(client: Any) -> str:
    """Empty when Redis answers PING within HEALTH_PING_TIMEOUT, else why not."""
    try:
        async with asyncio.timeout(HEALTH_PING_TIMEOUT):
            await client.ping()
    except TimeoutError:
        return f"no answer to PING within {HEALTH_PING_TIMEOUT:g} s"
    except (*UNAVAILABLE, RedisError) as exc:
        return str(exc) or type(exc).__name__
    return ""


def health_handler(
    client_of: Callable[[web.Application], Any],
    info: Callable[[], dict[str, Any]] | None = None,
) -> Handler:
    """Readiness: 200 `{"status": "ok", "redis": "ok", ...info}` when Redis answers PING, else
    503 `{"status": "unavailable", "redis": "unreachable", "error", "detail"}`."""

    async def health(request: web.Request) -> web.Response:
        extra = info() if info is not None else {}
        problem = await redis_reachable(client_of(request.app))
        if problem:
            body = {"status": "unavailable", "redis": "unreachable", **extra}
            body.update(error="unavailable", detail=f"Redis: {problem}")
            return json_response(body, status=503, headers={"Retry-After": "1"})
        return json_response({"status": "ok", "redis": "ok", **extra})

    return health


def add_health_routes(
    app: web.Application,
    client_of: Callable[[web.Application], Any],
    info: Callable[[], dict[str, Any]] | None = None,
) -> None:
    app.router.add_get(HEALTH_PATH, health_handler(client_of, info))
    app.router.add_get(LIVE_PATH, live)

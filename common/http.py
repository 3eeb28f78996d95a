"""aiohttp pieces every API shares: JSON errors, body limits, Redis-outage answers, auth."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import jwt
import msgspec
from aiohttp import web

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


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refusing more than `max_bytes` with 413 before reading it all."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise InputError("too_large", f"body exceeds {max_bytes} bytes", status=413)
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise InputError("too_large", f"body exceeds {max_bytes} bytes", status=413)
    return bytes(body)


def auth_middleware(settings: Settings, public: Iterable[str] = ("/health",)) -> Any:
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


async def health(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})

"""aiohttp pieces every API shares: JSON errors, body limits, Redis-outage answers, auth, and
the health answers.

Every error a client can cause is a 4xx `{"error", "detail"}` JSON answer, whichever layer
refuses it:

* a handler: `InputError`, or a body `decode_json` cannot read (not UTF-8, nested too deeply,
  not JSON, not the expected shape);
* the router and aiohttp's request helpers: `web.HTTPException` (404, 405, 413...);
* aiohttp's HTTP parser, before any handler or middleware runs (a request line over 8 KiB, a
  header too large, a malformed request): `JsonErrorProtocol`;
* aiohttp's own answers after routing but outside the middlewares (417 for an unknown
  `Expect`): `plain_errors_as_json`;
* a header that is not UTF-8, refused before aiohttp or sesflow reads any:
  `refusing_undecodable_headers`.

The last three come with `JsonAppRunner`, which every server of sesflow runs on.

Every HTTP role serves two health paths, both public:

    GET /livez    liveness: the process answers HTTP. Never touches Redis, so a Redis outage
                  does not get every pod restarted (k8s livenessProbe).
    GET /health   readiness: also PINGs Redis (within HEALTH_PING_TIMEOUT); 503 when Redis does
                  not answer, so a role stuck on Redis is taken out of rotation and noticed.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, TypeVar

import jwt
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest
from redis.exceptions import RedisError

from sesflow.common.connection import UNAVAILABLE, Redis
from sesflow.common.errors import InputError, RedisUnavailable
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


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
    status: int,
    error: str,
    detail: str = "",
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body = {**(extra or {}), "error": error, "detail": detail}
    return json_response(body, status=status, headers=headers)


def unavailable_response() -> web.Response:
    return error_response(
        503, "unavailable", "Redis is unavailable; retry later", headers={"Retry-After": "1"}
    )


def error_name(status: int) -> str:
    """`not_found`, `method_not_allowed`... from the status's standard phrase."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return phrase.lower().replace(" ", "_").replace("-", "_")


def decode_json(
    body: bytes, decoder: Callable[[bytes], T], what: str = "body", error: str = "invalid_json"
) -> T:
    """`decoder(body)` for bytes a client sent: every way they can fail is an InputError (400).

    msgspec raises UnicodeDecodeError for a string that is not UTF-8 and RecursionError for
    nesting deeper than the interpreter allows; neither is a DecodeError, and both would
    otherwise be a 500. Nothing decoded from a refused body can reach Redis."""
    try:
        return decoder(body)
    except UnicodeDecodeError as exc:
        raise InputError(error, f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise InputError(error, f"{what} is nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise InputError(error, f"{what} has the wrong shape: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise InputError(error, f"{what} is not valid JSON: {exc}") from None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error", "detail"}` JSON; Redis outages become 503 + Retry-After."""
    resp = await answer_or_error(request, handler)
    if request.body_exists and not request.content.is_eof():
        # The handler left (part of) the body unread: a GET with a body, a refusal before
        # reading, a body that cannot be decoded. aiohttp would read the rest after answering,
        # and drop the connection, logging an error, if it cannot be decoded: a client reusing
        # that connection would find it closed. Saying so in the answer is cleaner.
        resp.force_close()
    return resp


async def answer_or_error(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InputError as exc:
        return error_response(exc.status, exc.error, exc.detail, extra=exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Keep what the client needs to act on, e.g. the Allow of a 405.
        keep = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return error_response(
            exc.status, exc.reason.lower().replace(" ", "_"), exc.text or "", headers=keep
        )
    except RequestPayloadError as exc:
        # The body could not be read as framed and encoded: a Content-Encoding it does not
        # match, a broken chunked encoding, a connection closed mid-body.
        return error_response(400, "invalid_body", f"the body could not be read: {exc}")
    except HttpProcessingError as exc:
        status = exc.code if 400 <= exc.code < 500 else 400
        return error_response(status, error_name(status), exc.message)
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
    """API_KEY (header x-api-key, the Go service's) and/or JWT_SECRET (HS256 bearer, the Rust
    service's). With neither set the API is open (only on loopback, unless ALLOW_UNAUTHENTICATED:
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


# ASCII digits only, and few enough for int(): str.isdigit() also takes "²", which int() refuses,
# and int() refuses more than 4300 digits.
DIGITS = re.compile(r"[0-9]{1,20}")


def int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """The integer parameter `name` (`raw`, as the query string gave it) in low..high, `default`
    when absent or empty; else an InputError (a 400)."""
    if not raw:
        return default
    if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InputError("invalid_parameter", f"{name} must be an integer in {low}..{high}")
    return int(raw)


async def live(_: web.Request) -> web.Response:
    """Liveness: answers as long as the process serves HTTP; no Redis."""
    return json_response({"status": "ok"})


async def redis_reachable(client: Redis) -> str:
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


# --- errors aiohttp answers before the app sees the request -------------------------------------


class JsonErrorProtocol(web.RequestHandler):
    """aiohttp's connection handler, answering in JSON what its parser refuses (400 for a request
    line over 8 KiB or a header too large, 501...) and a failure outside every middleware (500):
    aiohttp itself answers those in plain text, before any middleware could translate them."""

    def data_received(self, data: bytes) -> None:
        """A body its Content-Encoding cannot decode, found out only at its end, makes aiohttp's
        parser fail after the request was handed over: aiohttp then queues an error for the
        *next* request and the handler reading this body waits forever. The body is failed
        instead, and its reader answers 400 (`errors_middleware`)."""
        queued = len(self._messages)
        super().data_received(data)
        request = self._current_request
        if request is None or request.content.is_eof():
            return
        for message, _ in list(self._messages)[queued:]:
            if isinstance(message, _ErrInfo):
                request.content.set_exception(RequestPayloadError(message.message))
                return

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # aiohttp logs it with its traceback, and raises when a response has begun.
            super().handle_error(request, status, exc, message)
            detail = "unexpected error; it has been logged"
            resp = error_response(
                status, "internal" if status == 500 else error_name(status), detail
            )
        else:
            # A malformed request is the client's doing, and the internet sends plenty: one
            # line, not an error with a traceback (Sentry would report each one).
            log.info("request refused by the HTTP parser", status=status, detail=message)
            if request.writer.output_size > 0:
                raise ConnectionError("a response has begun; no error can be sent")
            resp = error_response(status, error_name(status), message or "")
        resp.force_close()
        return resp


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


async def plain_errors_as_json(_: web.Request, response: web.StreamResponse) -> None:
    """A plain-text error aiohttp answers itself after routing but outside every middleware
    (417 for an unknown `Expect`) is rewritten as JSON as it is sent."""
    if (
        response.status >= 400
        and isinstance(response, web.Response)
        and response.content_type == "text/plain"
    ):
        body = msgspec.json.encode(
            {"error": error_name(response.status), "detail": response.text or ""}
        )
        response.body = body
        response.content_type = "application/json"
        response.charset = None
        # The headers were prepared for the text before this hook runs. The body of the request
        # may be left unread: close, as errors_middleware does.
        response.headers["Content-Length"] = str(len(body))
        response.force_close()
        response.headers["Connection"] = "close"


def undecodable_header(request: BaseRequest) -> str | None:
    """The name of a header whose value is not UTF-8, if any. aiohttp keeps such bytes as lone
    surrogates, which fail wherever the value is encoded (an API key compared, a token verified,
    an error text built, a value written to Redis)."""
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return name
    return None


def refusing_undecodable_headers(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """`handler` behind a check of the headers, before aiohttp's Expect handling, routing and
    every middleware: no code of aiohttp's or ours meets a header that is not UTF-8."""

    async def guarded(request: BaseRequest) -> web.StreamResponse:
        bad = undecodable_header(request)
        if bad is not None:
            resp = error_response(400, "invalid_header", f"header {bad} is not UTF-8")
            resp.force_close()  # its body, if any, is left unread
            return resp
        return await handler(request)

    return guarded


# After answering a request whose body it did not read (a refusal), aiohttp reads and drops the
# rest for up to this long before closing, so that the client, still sending, gets the answer
# rather than a reset. aiohttp's 10 s let a body whose Content-Encoding never decodes to an end
# hold the connection open that long after the answer; 2 s covers a client sending at 25 MB/s.
LINGER_S = 2.0


class JsonAppRunner(web.AppRunner):
    """`web.AppRunner` whose answers are JSON even for the errors aiohttp answers itself: those
    of its HTTP parser (`JsonErrorProtocol`), and those outside every middleware
    (`plain_errors_as_json`); and that refuses headers that are not UTF-8 first of all. It
    lingers LINGER_S after a refusal, not aiohttp's 10 s."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("lingering_time", LINGER_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        self.app.on_response_prepare.append(plain_errors_as_json)
        server = await super()._make_server()
        server.request_handler = refusing_undecodable_headers(server.request_handler)
        server.__class__ = JsonErrorServer  # same state, only the protocol it builds differs
        return server

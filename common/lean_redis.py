"""A lean Redis channel for the calls a sender makes dozens of times a second.

Why: at EMAIL_RATE=500 the sender wakes up every ~30 ms for a grid point and makes about seven
round trips around it (pump, rate slots, pre-check, claim, record). Measured on the same
redis-server, one EVALSHA through redis-py's asyncio client costs ~560 us of CPU when the
process wakes up for it (~145 us back to back), the same EVALSHA written on a socket and read
back with hiredis ~155 us (~55 us back to back). redis-py takes a pooled connection under a
lock, wraps each write in `asyncio.wait_for` (a task per command on Python 3.11), arms two more
timeouts and goes through its retry and observability layers; a process that sleeps between
calls pays for all that code cold. Those round trips were most of the sender's CPU.

What it is: one connection per process, with any number of requests in flight on it in order
(a pipeline is one request with several replies), replies parsed by hiredis, error replies
turned into redis-py's exception classes, and the main client's retry policy (3 retries,
exponential backoff) on connection errors, timeouts and LOADING. A request with no reply within
the socket timeout closes the connection and fails every request on it with TimeoutError; a
lost connection fails them with ConnectionError; callers waiting for a connection share one
attempt and its failure. A reply it cannot decode fails only its request (UnicodeDecodeError,
not retried). Callers see what redis-py would raise, so their outage handling is the same. A
closed lane (`detach`) stays closed: no retry, no new connection.

What it is not: a client. A lane carries commands that answer at once and no MULTI/EXEC; a
blocking command (XREADGROUP with BLOCK), which would hold up every request behind it, goes only
on a lane of its own (`reader`, `execute_blocking`). It serves plain `redis://` and `unix://`
URLs on one server; with TLS or Redis Cluster, `attach` adds no lane and the process uses
redis-py for everything.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import hiredis
from redis._parsers import BaseParser
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from sesflow.common.metrics import RECONNECTS
from sesflow.common.settings import Settings

RETRIES = 3  # as the main client's Retry (common/connection.py)
_URL_OPTIONS = {"host", "port", "path", "db", "username", "password", "connection_class"}

T = TypeVar("T")
Command = Sequence[Any]


def pack(commands: Sequence[Command], errors: str) -> bytes:
    """The commands as one RESP write. hiredis refuses lone surrogates (text decoded with
    surrogateescape): those commands are encoded with `errors`, byte for byte as they came.
    An argument redis-py would refuse (None, a bool, a list) is its DataError here too."""
    out = []
    for command in commands:
        try:
            try:
                out.append(hiredis.pack_command(cast(Any, tuple(command))))
            except UnicodeEncodeError:
                encoded = (a.encode("utf-8", errors) if isinstance(a, str) else a for a in command)
                out.append(hiredis.pack_command(cast(Any, tuple(encoded))))
        except TypeError as exc:
            name = command[0] if command else ""
            raise DataError(f"Invalid input for {name!r}: {exc}") from exc
    return b"".join(out)


class _Request:
    __slots__ = ("deadline", "error", "future", "replies", "size")

    def __init__(self, future: asyncio.Future[list[Any]], size: int, deadline: float) -> None:
        self.future = future
        self.size = size
        self.replies: list[Any] = []
        self.deadline = deadline
        self.error: Exception | None = None  # a reply it could not decode

    def done(self) -> None:
        if self.future.done():  # its caller went away: replies dropped
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.replies)


class _Connection(asyncio.Protocol):
    """One socket: requests answered in the order they were written."""

    def __init__(self, errors: str, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(
            replyError=BaseParser.parse_error,
            protocolError=InvalidResponse,
            encoding="utf-8",
            errors=errors,
        )
        self.timeout = timeout
        self.pending: deque[_Request] = deque()
        self.transport: asyncio.Transport | None = None
        self.failure: Exception | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            error = None
            try:
                reply = self.reader.gets()
            except InvalidResponse as exc:
                self.close(RedisConnectionError(f"Protocol error from Redis: {exc}"))
                return
            except UnicodeDecodeError as exc:
                # A reply it could not decode (errors="strict"): hiredis has consumed it, so the
                # connection is still in step. Its request fails with it once, as with redis-py;
                # not a connection error, which would send the request again.
                reply, error = None, exc
            if reply is False:
                return
            if not self.pending:
                self.close(RedisConnectionError("Protocol error from Redis: an unasked reply"))
                return
            request = self.pending[0]
            request.replies.append(reply)
            if error is not None and request.error is None:
                request.error = error
            if len(request.replies) == request.size:
                self.pending.popleft()
                request.done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by server'}"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def send(self, data: bytes, size: int) -> list[Any]:
        if self._writable is not None:  # the socket's buffer is full: wait as drain() would
            await asyncio.shield(self._writable)
        if self.failure is not None or self.transport is None:
            raise self.failure or RedisConnectionError("Connection to Redis closed")
        if self.transport.is_closing():
            # asyncio saw it break (a reset, a close); connection_lost comes a loop turn later.
            # Written now, the request would go nowhere (asyncio warns of each such write).
            raise RedisConnectionError("Connection to Redis lost")
        request = _Request(self.loop.create_future(), size, self.loop.time() + self.timeout)
        self.pending.append(request)
        self.transport.write(data)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(request.deadline, self._check_deadline)
        return await request.future

    def _check_deadline(self) -> None:
        """One timer for every request: the oldest one is the first due."""
        self._watchdog = None
        if not self.pending:
            return
        deadline = self.pending[0].deadline
        if deadline <= self.loop.time():
            self.close(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._watchdog = self.loop.call_at(deadline, self._check_deadline)

    def close(self, failure: Exception) -> None:
        self.fail(failure)
        if self.transport is not None:
            self.transport.abort()

    def fail(self, failure: Exception) -> None:
        """Every request in flight fails with `failure`, and so does any later one."""
        if self.failure is None:
            self.failure = failure
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.pending:
            request = self.pending.popleft()
            if not request.future.done():
                request.future.set_exception(self.failure)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)


@dataclass(frozen=True)
class Address:
    """Where the server is and how to log in: what a plain REDIS_URL says."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None

    def handshake(self) -> list[Command]:
        commands: list[Command] = []
        if self.username or self.password:
            # as redis-py logs in: a username without a password is `AUTH user ""` (an ACL user
            # with nopass), not the default user
            login = (self.username, self.password or "") if self.username else (self.password,)
            commands.append(("AUTH", *login))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


class LeanRedis:
    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        errors: str = "strict",
    ) -> None:
        self.address = address
        self.handshake = address.handshake()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.errors = errors
        self.backoff: AbstractBackoff = ExponentialBackoff(cap=1.0, base=0.05)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._connected_before = False
        self._readers: dict[str, LeanRedis] = {}
        self._closed = False
        self._tried = 0  # connection attempts ended
        self._refused: Exception | None = None  # how the last one failed

    @classmethod
    def from_settings(cls, settings: Settings, errors: str = "strict") -> LeanRedis | None:
        """A lane for REDIS_URL, or None where it does not serve (module doc)."""
        if settings.redis_cluster or not settings.redis_url:
            return None
        options: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        kind = options.get("connection_class")
        if set(options) - _URL_OPTIONS or kind not in (None, UnixDomainSocketConnection):
            return None  # TLS, or options only redis-py knows
        address = Address(
            host=options.get("host", "localhost"),
            port=int(options.get("port", 6379)),
            path=options.get("path"),
            db=int(options.get("db", 0)),
            username=options.get("username"),
            password=options.get("password"),
        )
        return cls(
            address,
            timeout=settings.redis_socket_timeout,
            connect_timeout=settings.redis_connect_timeout,
            errors=errors,
        )

    async def execute(self, *command: Any) -> Any:
        """One command's reply; an error reply is raised."""
        data = pack([command], self.errors)

        async def once() -> Any:
            [reply] = await self._round_trip(data, 1)
            if isinstance(reply, Exception):
                raise reply
            return reply

        return await self._retrying(once)

    async def execute_blocking(self, *command: Any) -> Any:
        """`execute` for a command that blocks, on a lane of its own (`reader`): cancelled
        (a stop, a guard timeout), it closes the connection, as redis-py does, so that the next
        command does not wait behind it."""
        try:
            return await self.execute(*command)
        except asyncio.CancelledError:
            if self._conn is not None:
                self._conn.close(RedisConnectionError("a blocking command was cancelled"))
            raise

    def reader(self, stream: str) -> LeanRedis:
        """A lane of its own for the blocking reads of `stream`: nothing waits behind them."""
        if stream not in self._readers:
            self._readers[stream] = LeanRedis(
                self.address,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                errors=self.errors,
            )
            self._readers[stream]._closed = self._closed  # one of a closed lane is closed
        return self._readers[stream]

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """One reply per command, in one round trip; error replies are returned in place,
        except those redis-py takes for a connection error (LOADING): as redis-py does, the
        whole pipeline is sent again, within the retries."""
        if not commands:
            return []  # nothing to wait for: a request of no reply would never be answered
        data = pack(commands, self.errors)

        async def once() -> list[Any]:
            replies = await self._round_trip(data, len(commands))
            for reply in replies:
                if isinstance(reply, RedisConnectionError):
                    raise reply
            return replies

        return await self._retrying(once)

    async def aclose(self) -> None:
        """Closes the lane, and its readers, for good: requests in flight and later ones fail
        with ConnectionError, without retries, and no connection opens again."""
        self._closed = True
        for reader in self._readers.values():
            await reader.aclose()
        if self._conn is not None:
            self._conn.close(RedisConnectionError("Connection to Redis closed"))
            self._conn = None

    async def _retrying(self, once: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await once()
            except (RedisConnectionError, RedisTimeoutError):  # LOADING is a ConnectionError
                failures += 1
                if failures > RETRIES or self._closed:
                    raise
                await asyncio.sleep(self.backoff.compute(failures))

    async def _round_trip(self, data: bytes, size: int) -> list[Any]:
        conn = self._conn
        if conn is None or conn.failure is not None:
            conn = await self._connect()
        return await conn.send(data, size)

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        tried = self._tried
        async with self._connecting:
            if self._conn is not None and self._conn.failure is None:
                return self._conn  # another caller connected meanwhile
            if self._closed:
                raise RedisConnectionError("Connection to Redis closed")
            if self._tried != tried and self._refused is not None:
                # An attempt that ended while this caller waited failed: that is its answer
                # too. Else, with a server that drops SYNs, the n-th of n callers would wait n
                # connect timeouts for its own attempt.
                raise type(self._refused)(*self._refused.args)
            try:
                conn = await self._open()
                try:
                    await self._log_in(conn)
                    if self._closed:  # closed while it was connecting
                        raise RedisConnectionError("Connection to Redis closed")
                except BaseException:  # a refusal, a timeout, or its caller cancelled
                    conn.close(RedisConnectionError("Connection to Redis closed"))
                    raise
            except Exception as exc:
                self._refused = exc
                raise
            except BaseException:
                self._refused = None  # cancelled: the next caller tries for itself
                raise
            finally:
                self._tried += 1
            self._refused = None
            if self._connected_before:
                RECONNECTS.count += 1  # sesflow_redis_reconnects_total, as for redis-py's
            self._connected_before = True
            self._conn = conn
            return conn

    async def _log_in(self, conn: _Connection) -> None:
        if not self.handshake:
            return
        replies = await conn.send(pack(self.handshake, self.errors), len(self.handshake))
        for reply in replies:
            if isinstance(reply, RedisConnectionError):  # AuthenticationError, LOADING
                raise reply
            if isinstance(reply, Exception):
                raise RedisConnectionError(f"Redis refused the connection: {reply}")

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, path = self.address.host, self.address.port, self.address.path

        def factory() -> _Connection:
            return _Connection(self.errors, self.timeout)

        where = path or f"{host}:{port}"
        # asyncio.timeout, not wait_for: on 3.11 wait_for runs the opening in a task of its
        # own, and a caller cancelled just as it connected would leave that socket open.
        try:
            async with asyncio.timeout(self.connect_timeout):
                if path:
                    _, conn = await loop.create_unix_connection(factory, path)
                else:
                    _, conn = await loop.create_connection(factory, host, port)
        except TimeoutError as exc:  # as redis-py says it
            raise RedisTimeoutError(f"Timeout connecting to Redis at {where}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {where}: {exc}") from exc
        return conn


# --- which client has a lane -------------------------------------------------------------------

_LANES: weakref.WeakKeyDictionary[Any, LeanRedis] = weakref.WeakKeyDictionary()


def attach(client: Any, settings: Settings, errors: str = "strict") -> LeanRedis | None:
    """Give `client`'s script calls and `pipeline_for` pipelines a lane (where one serves)."""
    lane = LeanRedis.from_settings(settings, errors)
    if lane is not None:
        _LANES[client] = lane
    return lane


def lane_of(client: Any) -> LeanRedis | None:
    return _LANES.get(client)


async def detach(client: Any) -> None:
    """`client` without its lane, which is closed for good (`LeanRedis.aclose`)."""
    lane = _LANES.pop(client, None)
    if lane is not None:
        await lane.aclose()


def entries_of(raw: list[Any]) -> list[tuple[str, dict[str, str] | None]]:
    """Stream entries as RESP2 sends them, as redis-py gives them: (id, fields or None)."""
    return [
        (entry_id, None if flat is None else dict(zip(flat[::2], flat[1::2], strict=True)))
        for entry_id, flat in raw
    ]


class Commands:
    """Queues commands as a redis-py pipeline without a transaction does, for a lane: only the
    commands the hot path pipelines."""

    def __init__(self, lane: LeanRedis) -> None:
        self.lane = lane
        self.commands: list[Command] = []

    def get(self, key: str) -> None:
        self.commands.append(("GET", key))

    def hmget(self, key: str, fields: Sequence[str]) -> None:
        self.commands.append(("HMGET", key, *fields))

    def getrange(self, key: str, start: int, end: int) -> None:
        self.commands.append(("GETRANGE", key, start, end))

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        # As a redis-py pipeline, it starts empty again: a second execute sends only what was
        # queued since, never the same commands twice.
        commands, self.commands = self.commands, []
        replies = await self.lane.pipeline(commands)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def pipeline_for(client: Any) -> Any:
    """A pipeline without a transaction: on `client`'s lane when it has one."""
    lane = lane_of(client)
    return Commands(lane) if lane is not None else client.pipeline(transaction=False)

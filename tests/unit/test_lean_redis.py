"""The lean Redis lane against real redis-servers: replies and error replies as redis-py gives
them, order under concurrency and cancellation, surrogateescape, timeouts, lost connections and
outages (redis-py's exception classes and retry policy), the AUTH/SELECT handshake, which URLs
it serves, and the helpers built on it (pipelines, stream entries, scripts, attach/detach).
A few protocol corner cases (LOADING, a stalled handshake) use a scripted TCP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis as syncredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.backoff import ConstantBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sesflow.cli.embedded import RedisProcess, free_port
from sesflow.common import lean_redis
from sesflow.common.lean_redis import (
    Address,
    Commands,
    LeanRedis,
    attach,
    detach,
    entries_of,
    lane_of,
    pipeline_for,
)
from sesflow.common.metrics import RECONNECTS
from sesflow.common.scripts import Script
from sesflow.common.settings import Settings

from support.until import until, until_sync

pytestmark = pytest.mark.timeout(60)

MakeSettings = Callable[..., Settings]


@pytest.fixture(autouse=True)
def no_asyncio_complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No "Future exception was never retrieved", no fatal protocol errors, no writes to a
    lost socket: asyncio logs each of them, and none may happen."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    gc.collect()
    # the records of every phase: in teardown, `caplog.records` holds only teardown's
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    complaints = [r.getMessage() for r in records if r.name == "asyncio"]
    assert complaints == []


def lane_at(port: int, **options: Any) -> LeanRedis:
    return LeanRedis(Address(host="127.0.0.1", port=port), **options)


@pytest.fixture
async def lane(redis_process: RedisProcess, redis_url: str) -> AsyncIterator[LeanRedis]:
    """A lane to the session's (emptied) redis-server."""
    lane = lane_at(redis_process.port)
    yield lane
    await lane.aclose()


@pytest.fixture
def raw(redis_url: str) -> Iterator[syncredis.Redis]:
    """A bytes-mode redis-py client: what is stored, byte for byte."""
    client = syncredis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server this test may kill and restart (on the same port)."""
    servers = [RedisProcess(tmp_path / "redis", aof=False).start()]
    yield servers[0]
    servers[0].stop()


def restart(server: RedisProcess) -> RedisProcess:
    return RedisProcess(server.data_dir, port=server.port, aof=False).start()


async def blocked_clients(client: aioredis.Redis) -> int:
    return int((await client.info("clients"))["blocked_clients"])


# --- replies --------------------------------------------------------------------------------


async def test_replies_of_each_type(lane: LeanRedis) -> None:
    assert await lane.execute("SET", "s", "vé") == "OK"  # a status reply, decoded
    assert await lane.execute("GET", "s") == "vé"  # a bulk string, decoded
    assert await lane.execute("GET", "missing") is None
    assert await lane.execute("INCRBY", "n", 41) == 41
    assert await lane.execute("INCRBYFLOAT", "f", 1.5) == "1.5"
    assert await lane.execute("RPUSH", "l", "a", "b") == 2
    assert await lane.execute("LRANGE", "l", 0, -1) == ["a", "b"]
    assert await lane.execute("LRANGE", "nolist", 0, -1) == []
    assert await lane.execute("HSET", "h", "f", "v") == 1
    assert await lane.execute("HMGET", "h", "f", "nofield") == ["v", None]
    nested = "return {1, {'a', {2, 'b'}}, {}}"
    assert await lane.execute("EVAL", nested, 0) == [1, ["a", [2, "b"]], []]
    assert await lane.execute("SET", "bytes", b"\x00\x01") == "OK"
    assert await lane.execute("STRLEN", "bytes") == 2


async def test_error_replies_are_raised_as_redis_py_raises_them(
    lane: LeanRedis, redis: aioredis.Redis
) -> None:
    with pytest.raises(NoScriptError):
        await lane.execute("EVALSHA", "0" * 40, 0)
    await lane.execute("XADD", "s", "*", "f", "v")
    command = ("XREADGROUP", "GROUP", "nogroup", "c", "COUNT", 1, "STREAMS", "s", ">")
    with pytest.raises(ResponseError) as lean:
        await lane.execute(*command)
    with pytest.raises(ResponseError) as redis_py:
        await redis.execute_command(*command)
    assert str(lean.value).startswith("NOGROUP No such key 's' or consumer group 'nogroup'")
    assert str(lean.value) == str(redis_py.value)
    await lane.execute("SET", "str", "x")
    with pytest.raises(ResponseError, match=r"^WRONGTYPE Operation against a key"):
        await lane.execute("LPUSH", "str", "y")
    with pytest.raises(ResponseError, match="not an integer"):
        await lane.execute("INCR", "str")
    assert await lane.execute("GET", "str") == "x"  # the lane goes on after error replies


async def test_a_pipeline_returns_error_replies_in_place(lane: LeanRedis) -> None:
    await lane.execute("SET", "str", "x")
    replies = await lane.pipeline(
        [("SET", "a", 1), ("INCR", "str"), ("GET", "a"), ("LPUSH", "str", "y"), ("GET", "str")]
    )
    assert replies[0] == "OK" and replies[2] == "1" and replies[4] == "x"
    assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    assert isinstance(replies[3], ResponseError) and str(replies[3]).startswith("WRONGTYPE")
    assert await lane.pipeline([]) == []  # nothing to send, nothing to wait for


async def test_arguments_redis_py_refuses_are_refused_as_it_does(lane: LeanRedis) -> None:
    for bad in (True, None, ["a"]):
        with pytest.raises(DataError):
            await lane.execute("SET", "k", bad)
        with pytest.raises(DataError):
            await lane.pipeline([("GET", "a"), ("SET", "k", bad)])
    assert await lane.execute("EXISTS", "k") == 0


# --- order, concurrency, cancellation -------------------------------------------------------


async def test_many_concurrent_requests_are_answered_in_order_to_their_callers(
    lane: LeanRedis, raw: syncredis.Redis
) -> None:
    raw.mset({f"k{n}": f"v{n}" for n in range(500)})
    counts = await asyncio.gather(*(lane.execute("INCR", "counter") for _ in range(500)))
    assert counts == list(range(1, 501))
    values = await asyncio.gather(*(lane.execute("GET", f"k{n}") for n in range(500)))
    assert values == [f"v{n}" for n in range(500)]
    mixed = await asyncio.gather(
        *(lane.pipeline([("GET", f"k{n}"), ("INCR", "counter")]) for n in range(100)),
        *(lane.execute("GET", f"k{n}") for n in range(100, 200)),
    )
    assert mixed[:100] == [[f"v{n}", 501 + n] for n in range(100)]
    assert mixed[100:] == [f"v{n}" for n in range(100, 200)]


async def test_a_cancelled_caller_does_not_shift_the_replies_of_later_ones(
    lane: LeanRedis, redis: aioredis.Redis, raw: syncredis.Redis
) -> None:
    raw.mset({f"k{n}": f"v{n}" for n in range(60)})
    await lane.execute("PING")
    # A blocking pop keeps every request written after it in flight until "q" gets an item.
    head = asyncio.create_task(lane.execute("BLPOP", "q", 5))
    await until(lambda: blocked_clients(redis), lambda n: n == 1, what="the BLPOP to block")
    tasks = [asyncio.create_task(lane.execute("GET", f"k{n}")) for n in range(30)]
    tasks += [asyncio.create_task(lane.pipeline([("GET", f"k{n}")])) for n in range(30, 60)]
    conn = lane._conn
    assert conn is not None
    await until(lambda: _pending(conn), lambda n: n == 61, what="61 requests in flight")
    for task in tasks[::3]:
        task.cancel()
    later = asyncio.create_task(lane.execute("GET", "k7"))
    await redis.rpush("q", "item")
    assert await head == ["q", "item"]
    assert await later == "v7"
    for n, task in enumerate(tasks):
        if n % 3 == 0:
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            assert await task == (f"v{n}" if n < 30 else [f"v{n}"])
    assert await lane.execute("GET", "k8") == "v8"
    assert lane._conn is conn  # the same connection throughout: nothing failed


async def _pending(conn: Any) -> int:
    return len(conn.pending)


# --- text that is not UTF-8 -----------------------------------------------------------------


async def test_surrogateescape_text_is_stored_byte_for_byte_and_read_back(
    redis_process: RedisProcess, redis_url: str, raw: syncredis.Redis
) -> None:
    lane = lane_at(redis_process.port, errors="surrogateescape")
    value = b"\xffok\xfe".decode("utf-8", "surrogateescape")
    key = b"key\xff".decode("utf-8", "surrogateescape")
    try:
        assert await lane.execute("SET", key, value) == "OK"
        assert raw.get(b"key\xff") == b"\xffok\xfe"
        assert await lane.execute("GET", key) == value
        assert await lane.pipeline([("SET", "other", value), ("GET", "other")]) == ["OK", value]
        assert raw.get("other") == b"\xffok\xfe"
    finally:
        await lane.aclose()


async def test_a_strict_lane_raises_a_reply_it_cannot_decode_once_and_goes_on(
    lane: LeanRedis, raw: syncredis.Redis
) -> None:
    raw.set("bad", b"\xff")
    with pytest.raises(UnicodeEncodeError):  # as redis-py's encoder refuses it
        await lane.execute("SET", "k", b"\xff".decode("utf-8", "surrogateescape"))
    with pytest.raises(UnicodeDecodeError):  # as redis-py with decode_responses raises it
        await lane.execute("GET", "bad")
    with pytest.raises(UnicodeDecodeError):
        await lane.pipeline([("INCR", "counter"), ("GET", "bad"), ("INCR", "counter")])
    # Not a connection error: nothing was retried, and the replies after it are in step.
    assert raw.get("counter") == b"2"
    assert await lane.execute("GET", "counter") == "2"


# --- timeouts, lost connections, outages ----------------------------------------------------


async def test_a_request_without_reply_within_the_timeout_raises_timeout_error(
    redis_process: RedisProcess, redis_url: str
) -> None:
    lane = lane_at(redis_process.port, timeout=0.3)
    try:
        assert await lane.execute("PING") == "PONG"
        first = lane._conn
        before = RECONNECTS.count
        with pytest.raises(RedisTimeoutError):
            await lane.execute("BLPOP", "nokey", 2)
        assert await lane.execute("PING") == "PONG"
        assert lane._conn is not first  # a new connection
        assert RECONNECTS.count == before + 4  # one per retry, one for the PING after
    finally:
        await lane.aclose()


async def test_a_killed_connection_is_reopened_and_the_request_retried(
    lane: LeanRedis, redis: aioredis.Redis
) -> None:
    assert await lane.execute("PING") == "PONG"
    first = lane._conn
    before = RECONNECTS.count
    # A blocking pop keeps the request in flight while its connection is killed; its retry
    # blocks again for 1 s and answers nil.
    popping = asyncio.create_task(lane.execute("BLPOP", "q", 1))
    await until(lambda: blocked_clients(redis), lambda n: n == 1, what="the BLPOP to block")
    assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
    assert await popping is None
    assert lane._conn is not first
    assert RECONNECTS.count == before + 1
    assert await lane.execute("INCR", "n") == 1


async def test_nothing_is_written_on_a_connection_being_lost(lane: LeanRedis) -> None:
    """A connection that asyncio saw break (a reset, a close) is told so a loop turn later:
    the requests of that turn are not written on it, but sent again on a new one, each once."""
    assert await lane.execute("PING") == "PONG"
    conn = lane._conn
    assert conn is not None and conn.transport is not None
    calls = [asyncio.create_task(lane.execute("INCR", "n")) for _ in range(10)]
    conn.transport.close()  # as a reset does: the calls run before connection_lost
    counts = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert sorted(counts) == list(range(1, 11))
    assert lane._conn is not conn


async def test_a_server_down_longer_than_the_retries_is_a_connection_error(
    own_server: RedisProcess,
) -> None:
    lane = lane_at(own_server.port)
    try:
        assert await lane.execute("SET", "k", "v") == "OK"
        before = RECONNECTS.count
        popping = asyncio.create_task(lane.execute("BLPOP", "q", 5))
        await asyncio.sleep(0.2)
        own_server.kill()
        with pytest.raises(RedisConnectionError) as in_flight:
            await asyncio.wait_for(popping, 10)  # the guard only keeps a hang from hanging
        assert not isinstance(in_flight.value, OSError)
        with pytest.raises(RedisConnectionError) as later:
            await asyncio.wait_for(lane.execute("GET", "k"), 10)
        assert not isinstance(later.value, OSError)
        assert RECONNECTS.count == before
        server = restart(own_server)
        try:
            assert await lane.execute("PING") == "PONG"
            assert RECONNECTS.count == before + 1
        finally:
            server.stop()
    finally:
        await lane.aclose()


async def test_a_server_back_within_the_retries_answers_the_request_in_flight(
    own_server: RedisProcess,
) -> None:
    lane = lane_at(own_server.port)
    lane.backoff = ConstantBackoff(2.0)  # room enough for a restart, even on a busy machine
    servers = [own_server]
    try:
        assert await lane.execute("PING") == "PONG"
        before = RECONNECTS.count
        popping = asyncio.create_task(lane.execute("BLPOP", "q", 1))
        await asyncio.sleep(0.2)
        own_server.kill()
        servers.append(await asyncio.to_thread(restart, own_server))
        assert await asyncio.wait_for(popping, 20) is None
        assert RECONNECTS.count == before + 1
        assert await lane.execute("INCR", "n") == 1
    finally:
        await lane.aclose()
        servers[-1].stop()


async def test_a_server_that_was_never_there_is_a_connection_error_at_once() -> None:
    lane = lane_at(free_port())
    lane.backoff = ConstantBackoff(0.01)
    try:
        with pytest.raises(RedisConnectionError, match="Error connecting to Redis"):
            await asyncio.wait_for(lane.execute("PING"), 10)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(lane.pipeline([("PING",)]), 10)
    finally:
        await lane.aclose()


async def test_a_server_that_does_not_accept_is_a_timeout_within_the_connect_timeout() -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(0)
    port = listening.getsockname()[1]
    queued = [socket.socket() for _ in range(3)]  # the accept queue is full: SYNs are dropped
    for waiting in queued:
        waiting.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            waiting.connect(("127.0.0.1", port))
    lane = lane_at(port, connect_timeout=0.3)
    lane.backoff = ConstantBackoff(0.01)
    try:
        with pytest.raises(RedisTimeoutError, match="Timeout connecting to Redis"):
            await asyncio.wait_for(lane.execute("PING"), 10)
        assert lane._tried == 4  # the request, then its three retries
        # Callers waiting for a connection share the attempt under way, and its failure: one
        # caller at a time, the last of 10 would wait for 40 attempts of 0.3 s.
        failures = await asyncio.wait_for(
            asyncio.gather(*(lane.execute("PING") for _ in range(10)), return_exceptions=True),
            10,
        )
        assert all(isinstance(f, RedisTimeoutError) for f in failures)
        assert lane._tried - 4 <= 5  # four tries, shared by the ten callers (some slack)
    finally:
        await lane.aclose()
        for sock in (*queued, listening):
            sock.close()


# --- LOADING and the handshake, on a scripted server ----------------------------------------

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


class Scripted:
    """A TCP server that answers the n-th command with `replies[n]` (raw RESP), after `delay`
    seconds; `None` leaves a command unanswered. Counts commands and closed connections."""

    def __init__(self, replies: Sequence[bytes | None], delay: float = 0.0) -> None:
        self.replies = replies
        self.delay = delay
        self.commands: list[list[bytes]] = []
        self.closed = 0
        self.server: asyncio.Server | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self.commands.append(command)
                    assert len(self.commands) <= len(self.replies), f"unexpected {command!r}"
                    reply = self.replies[len(self.commands) - 1]
                    if reply is not None:
                        await asyncio.sleep(self.delay)
                        writer.write(reply)
        except ConnectionError:
            pass  # the client closed first
        except asyncio.CancelledError:
            pass  # ended by __aexit__: as a cancelled task, asyncio 3.11 logs its callback's error
        finally:
            self.closed += 1
            writer.close()


async def test_loading_is_retried_for_a_command_and_for_a_pipeline() -> None:
    replies = [LOADING, b"+PONG\r\n", LOADING, LOADING, b"$1\r\nx\r\n", b"$-1\r\n"]
    async with Scripted(replies) as port:
        lane = lane_at(port)
        try:
            assert await lane.execute("PING") == "PONG"
            assert await lane.pipeline([("GET", "a"), ("GET", "b")]) == ["x", None]
        finally:
            await lane.aclose()


async def test_loading_for_longer_than_the_retries_is_busy_loading_error() -> None:
    async with Scripted([LOADING] * 8) as port:
        lane = lane_at(port)
        lane.backoff = ConstantBackoff(0.01)
        try:
            with pytest.raises(BusyLoadingError):
                await lane.execute("PING")
            with pytest.raises(BusyLoadingError):
                await lane.pipeline([("PING",)])
        finally:
            await lane.aclose()


async def test_a_caller_cancelled_during_the_handshake_leaves_no_connection_open() -> None:
    scripted = Scripted([b"+OK\r\n", b"+OK\r\n", b"+PONG\r\n"], delay=0.3)
    async with scripted as port:
        lane = LeanRedis(Address(host="127.0.0.1", port=port, password="p"))
        try:
            call = asyncio.create_task(lane.execute("PING"))
            await until(lambda: _commands(scripted), lambda n: n == 1, what="AUTH sent")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # AUTH's answer comes after its caller left: the connection is closed, not kept.
            await until(lambda: _closed(scripted), lambda n: n == 1, what="the connection closed")
            assert await lane.execute("PING") == "PONG"  # a new connection and handshake
            assert [c[0] for c in scripted.commands] == [b"AUTH", b"AUTH", b"PING"]
        finally:
            await lane.aclose()


async def _commands(scripted: Scripted) -> int:
    return len(scripted.commands)


async def _closed(scripted: Scripted) -> int:
    return scripted.closed


# --- AUTH + SELECT, unix sockets, which URLs ------------------------------------------------


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", aof=False, extra=("--requirepass", "s3cret"))
    yield server.start()
    server.stop()


@pytest.mark.parametrize("login", [":s3cret", "default:s3cret"])
async def test_a_lane_logs_in_and_selects_the_url_s_database(
    password_server: RedisProcess, make_settings: MakeSettings, login: str
) -> None:
    url = f"redis://{login}@127.0.0.1:{password_server.port}/3"
    lane = LeanRedis.from_settings(make_settings(REDIS_URL=url))
    assert lane is not None
    db3 = syncredis.Redis(port=password_server.port, password="s3cret", db=3)
    db0 = syncredis.Redis(port=password_server.port, password="s3cret", db=0)
    try:
        assert await lane.execute("SET", "k", "v") == "OK"
        assert db3.get("k") == b"v"
        assert db0.exists("k") == 0
    finally:
        db3.close()
        db0.close()
        await lane.aclose()


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server whose only user is `alice`, an ACL user without a password."""
    users = ("--user", "alice", "on", "nopass", "~*", "&*", "+@all", "--user", "default", "off")
    server = RedisProcess(tmp_path / "redis", aof=False, extra=users)
    yield server.start()
    server.stop()


async def test_a_url_with_a_username_and_no_password_logs_in_as_redis_py_does(
    acl_server: RedisProcess, make_settings: MakeSettings
) -> None:
    url = f"redis://alice@127.0.0.1:{acl_server.port}/2"
    client = aioredis.Redis.from_url(url, decode_responses=True)
    lane = LeanRedis.from_settings(make_settings(REDIS_URL=url))
    assert lane is not None
    try:
        assert await client.acl_whoami() == "alice"  # redis-py sends AUTH alice ""
        assert await asyncio.wait_for(lane.execute("ACL", "WHOAMI"), 10) == "alice"
        assert await lane.execute("SET", "k", "v") == "OK"
        assert await client.get("k") == "v"  # the same database, 2
    finally:
        await client.aclose()
        await lane.aclose()


async def test_a_wrong_password_is_a_connection_error(
    password_server: RedisProcess, make_settings: MakeSettings
) -> None:
    url = f"redis://:wrong@127.0.0.1:{password_server.port}/3"
    lane = LeanRedis.from_settings(make_settings(REDIS_URL=url))
    assert lane is not None
    lane.backoff = ConstantBackoff(0.01)
    try:
        with pytest.raises(AuthenticationError, match=r"invalid (username-password pair|password)"):
            await lane.execute("PING")  # a ConnectionError, as redis-py raises it
    finally:
        await lane.aclose()


async def test_a_lane_serves_a_unix_socket(tmp_path: Path, make_settings: MakeSettings) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lean", dir="/tmp"))  # sun_path holds 107 bytes
    socket_path = folder / "redis.sock"
    server = RedisProcess(
        tmp_path / "redis",
        aof=False,
        extra=("--unixsocket", str(socket_path), "--unixsocketperm", "700"),
    ).start()
    until_sync(socket_path.exists, what="the unix socket")
    lane = LeanRedis.from_settings(make_settings(REDIS_URL=f"unix://{socket_path}?db=2"))
    admin = syncredis.Redis(port=server.port, db=2)
    try:
        assert lane is not None and lane.address.path == str(socket_path)
        assert await lane.execute("SET", "k", "v") == "OK"
        assert admin.get("k") == b"v"
    finally:
        admin.close()
        if lane is not None:
            await lane.aclose()
        server.stop()
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:7000/0",
        "redis://127.0.0.1:7000/0?socket_timeout=1",
        "redis://127.0.0.1:7000/0?protocol=3",
        "redis://127.0.0.1:7000/0?health_check_interval=5",
    ],
)
def test_no_lane_for_tls_or_options_only_redis_py_knows(
    make_settings: MakeSettings, url: str
) -> None:
    assert LeanRedis.from_settings(make_settings(REDIS_URL=url)) is None


def test_no_lane_for_a_cluster(make_settings: MakeSettings) -> None:
    settings = make_settings(REDIS_URL="redis://127.0.0.1:7000/0", REDIS_CLUSTER="1")
    assert LeanRedis.from_settings(settings) is None


def test_a_lane_for_a_plain_url_and_a_unix_socket(make_settings: MakeSettings) -> None:
    settings = make_settings(
        REDIS_URL="redis://me:p%40ss@cache.example:7001/4",
        REDIS_SOCKET_TIMEOUT="7.5",
        REDIS_CONNECT_TIMEOUT="1.5",
    )
    lane = LeanRedis.from_settings(settings, errors="surrogateescape")
    assert lane is not None
    assert lane.address == Address("cache.example", 7001, None, 4, "me", "p@ss")
    assert (lane.timeout, lane.connect_timeout, lane.errors) == (7.5, 1.5, "surrogateescape")
    assert lane.handshake == [("AUTH", "me", "p@ss"), ("SELECT", 4)]
    lane = LeanRedis.from_settings(make_settings(REDIS_URL="unix:///run/redis.sock"))
    assert lane is not None
    assert (lane.address.path, lane.address.db, lane.handshake) == ("/run/redis.sock", 0, [])


# --- helpers on top: stream entries, pipelines, attach ---------------------------------------


async def test_entries_of_gives_what_redis_py_gives(lane: LeanRedis, redis: aioredis.Redis) -> None:
    await redis.xgroup_create("s", "g", id="0", mkstream=True)
    ids = [await redis.xadd("s", {"a": str(n), "b": "x"}) for n in range(3)]
    found = await lane.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "s", ">")
    entries = entries_of(found[0][1])
    assert entries == [(i, {"a": str(n), "b": "x"}) for n, i in enumerate(ids)]
    assert await redis.xreadgroup("g", "c", {"s": "0"}) == [["s", entries]]
    await redis.xdel("s", ids[1])  # a deleted entry still pending: no fields
    history = await lane.execute("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0")
    assert entries_of(history[0][1])[1] == (ids[1], None)
    assert await lane.execute("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">") is None


async def test_commands_queue_as_a_pipeline_does(lane: LeanRedis, raw: syncredis.Redis) -> None:
    raw.set("s", "hello")
    raw.hset("h", mapping={"a": "1", "b": "2"})
    sha = str(raw.script_load("return {KEYS[1], ARGV[1]}"))
    pipe = Commands(lane)
    pipe.get("s")
    pipe.hmget("h", ["a", "z", "b"])
    pipe.getrange("s", 1, 3)
    pipe.evalsha(sha, 1, "key", "arg")
    assert await pipe.execute() == ["hello", ["1", None, "2"], "ell", ["key", "arg"]]
    pipe = Commands(lane)
    pipe.evalsha("0" * 40, 0)
    pipe.get("s")
    with pytest.raises(NoScriptError):
        await pipe.execute()
    pipe = Commands(lane)
    pipe.evalsha("0" * 40, 0)
    pipe.get("s")
    missing, value = await pipe.execute(raise_on_error=False)
    assert isinstance(missing, NoScriptError) and value == "hello"
    assert await Commands(lane).execute() == []


async def test_a_pipeline_is_sent_again_only_as_queued_again(lane: LeanRedis) -> None:
    pipe = Commands(lane)
    pipe.get("a")
    pipe.get("b")
    assert await pipe.execute() == [None, None]
    pipe.get("c")  # as a redis-py pipeline: after execute, it starts empty
    assert await pipe.execute() == [None]


async def test_pipeline_for_takes_the_lane_only_where_there_is_one(
    redis: aioredis.Redis, settings: Settings
) -> None:
    pipe = pipeline_for(redis)
    assert isinstance(pipe, Pipeline)
    pipe.get("a")
    assert await pipe.execute() == [None]
    lane = attach(redis, settings)
    try:
        assert lane is not None and lane_of(redis) is lane
        pipe = pipeline_for(redis)
        assert isinstance(pipe, Commands) and pipe.lane is lane
    finally:
        await detach(redis)


async def test_attach_and_detach(
    redis: aioredis.Redis, make_settings: MakeSettings, redis_process: RedisProcess
) -> None:
    assert attach(redis, make_settings(REDIS_CLUSTER="1")) is None
    assert lane_of(redis) is None
    lane = attach(redis, make_settings(), errors="surrogateescape")
    assert lane is not None and lane_of(redis) is lane and lane.errors == "surrogateescape"
    lane_id = await lane.execute("CLIENT", "ID")

    async def client_ids() -> set[int]:
        return {int(c["id"]) for c in await redis.client_list()}

    assert lane_id in await client_ids()
    await detach(redis)
    assert lane_of(redis) is None
    await until(client_ids, lambda ids: lane_id not in ids, what="the lane's connection closed")
    await detach(redis)  # a second time: nothing to do
    with pytest.raises(RedisConnectionError):  # closed for good: no connection opens again
        await lane.execute("PING")
    assert lane._conn is None


async def test_detach_fails_a_request_in_flight_and_opens_nothing_again(
    redis: aioredis.Redis, settings: Settings
) -> None:
    lane = attach(redis, settings)
    assert lane is not None
    await lane.execute("PING")
    popping = asyncio.create_task(lane.execute("BLPOP", "q", 5))
    await until(lambda: blocked_clients(redis), lambda n: n == 1, what="the BLPOP to block")
    before = RECONNECTS.count
    await detach(redis)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(popping, 10)
    assert RECONNECTS.count == before and lane._conn is None


def test_lanes_follow_their_clients_and_go_with_them(settings: Settings) -> None:
    class Client:
        pass

    client = Client()
    assert attach(client, settings) is not None
    assert len(lean_redis._LANES) >= 1
    count = len(lean_redis._LANES)
    del client
    gc.collect()
    assert len(lean_redis._LANES) == count - 1


# --- scripts --------------------------------------------------------------------------------

TEXT = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1] .. ':runs')}"


async def _loaded(client: Any, sha: str) -> bool:
    return bool((await client.script_exists(sha))[0])


async def test_a_script_on_plain_redis_py_loads_itself_again_after_a_flush(
    redis: aioredis.Redis,
) -> None:
    script = Script(redis, TEXT)
    assert await script(keys=["k"], args=["a"]) == ["k", "a", 1]
    assert await _loaded(redis, script.sha)
    await redis.script_flush()
    assert await script(keys=["k"], args=["b"]) == ["k", "b", 2]  # ran once more, not twice
    assert await _loaded(redis, script.sha)


async def test_a_script_goes_on_the_lane_and_loads_itself_again_after_a_flush(
    redis: aioredis.Redis, settings: Settings
) -> None:
    # The redis-py client points nowhere: every call must go on the lane.
    nowhere = aioredis.Redis(port=free_port(), decode_responses=True)
    lane = attach(nowhere, settings)
    assert lane is not None
    try:
        script = Script(nowhere, TEXT)
        assert await script(keys=["k"], args=["a"]) == ["k", "a", 1]
        assert await _loaded(redis, script.sha)
        await redis.script_flush()
        assert not await _loaded(redis, script.sha)
        assert await script(keys=["k"], args=["b"]) == ["k", "b", 2]
        assert await _loaded(redis, script.sha)
        await redis.set("w:runs", "x")
        with pytest.raises(ResponseError, match="not an integer"):  # its own error reply
            await script(keys=["w"], args=["c"])
    finally:
        await detach(nowhere)
        await nowhere.aclose()


# --- writing faster than the server reads ---------------------------------------------------


async def test_pipelines_of_several_megabytes_complete(
    lane: LeanRedis, raw: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused: list[bool] = []
    original: Callable[[Any], None] = lean_redis._Connection.pause_writing

    def pause_writing(self: Any) -> None:
        paused.append(True)
        original(self)

    monkeypatch.setattr(lean_redis._Connection, "pause_writing", pause_writing)
    value = "v" * 2048
    batches: list[Awaitable[list[Any]]] = [
        lane.pipeline([("SET", f"b{b}:{n}", value) for n in range(2000)]) for b in range(3)
    ]
    replies = await asyncio.gather(*batches, lane.execute("PING"))
    assert replies[:3] == [["OK"] * 2000] * 3 and replies[3] == "PONG"
    assert paused  # the socket's buffer filled up: writing waited for it
    assert raw.dbsize() == 6000
    assert raw.strlen("b2:1999") == 2048


# --- blocking reads on lanes of their own ---------------------------------------------------


async def test_a_blocking_read_on_a_reader_holds_up_nothing_else(
    lane: LeanRedis, redis: aioredis.Redis
) -> None:
    await redis.xgroup_create("s", "g", id="0", mkstream=True)
    reader = lane.reader("s")
    assert lane.reader("s") is reader and reader is not lane and lane.reader("t") is not reader
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 5000, "STREAMS", "s", ">")
    blocking = asyncio.create_task(reader.execute_blocking(*read))
    await until(lambda: blocked_clients(redis), lambda n: n == 1, what="the read to block")
    assert await lane.execute("PING") == "PONG"  # the main lane answers meanwhile
    assert not blocking.done()
    entry_id = await redis.xadd("s", {"f": "v"})
    found = await blocking
    assert entries_of(found[0][1]) == [(entry_id, {"f": "v"})]


async def test_a_cancelled_blocking_read_closes_its_connection(
    lane: LeanRedis, redis: aioredis.Redis
) -> None:
    await redis.xgroup_create("s", "g", id="0", mkstream=True)
    reader = lane.reader("s")
    reader_id = await reader.execute("CLIENT", "ID")
    read = ("XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "s", ">")
    blocking = asyncio.create_task(reader.execute_blocking(*read))
    await until(lambda: blocked_clients(redis), lambda n: n == 1, what="the read to block")
    blocking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocking

    async def client_ids() -> set[int]:
        return {int(c["id"]) for c in await redis.client_list()}

    # Closed, as redis-py closes a connection whose command was cancelled: the server stops
    # blocking for it, and no entry is handed to a reader nobody waits for.
    await until(client_ids, lambda ids: reader_id not in ids, what="the reader's connection closed")
    assert await blocked_clients(redis) == 0
    await redis.xadd("s", {"f": "v"})
    assert await redis.xpending("s", "g") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    found = await reader.execute("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">")
    assert len(found[0][1]) == 1  # the reader works again, on a new connection


async def test_closing_a_lane_closes_its_readers_for_good(
    lane: LeanRedis, redis: aioredis.Redis
) -> None:
    reader = lane.reader("s")
    reader_id = await reader.execute("CLIENT", "ID")
    await lane.aclose()
    with pytest.raises(RedisConnectionError):
        await reader.execute("PING")
    with pytest.raises(RedisConnectionError):
        await lane.reader("other").execute("PING")

    async def client_ids() -> set[int]:
        return {int(c["id"]) for c in await redis.client_list()}

    await until(client_ids, lambda ids: reader_id not in ids, what="the reader's connection closed")

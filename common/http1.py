"""A lean HTTP/1.1 keep-alive client for one kind of request: a POST of a JSON body to one
origin, its answer read into memory. The sender calls SES with it, the stats role's webhooks
their endpoints (one pool per endpoint).

aiohttp spends ~190 µs of CPU on such a request (request and response objects, multidicts,
cookie jar, tracing hooks, a timer per phase); this spends ~50 µs, which at one SES call per
recipient (SEND_MODE=single) is most of the sender's CPU. It does only what the send path needs:
one host, one connection per request in flight, `Content-Length` or chunked answers, TLS through
`ssl`, no redirects, no proxies, no retries.

Because the caller must tell "certainly not sent" from "SES may have it" (SESv2 has no
idempotency token), the client says which, precisely, since it does every write itself:

- `NotSent`: no connection could be had in time (refused, DNS, TLS handshake, connect timeout,
  every pooled connection busy until the connect timeout), or the pooled connection was seen
  closed before the first byte was written.
- `MaybeSent`: the request was written, then the answer did not come whole in time (`Timeout`),
  the connection broke (`ConnectionLost`), or the answer was not HTTP (`MalformedAnswer`).

A pooled connection the server closes while we write to it is the one case no client can tell
from a server that took the request and died: it stays `MaybeSent`. Idle connections are
dropped after `keepalive` seconds (SES keeps them longer) to make it rare.

For a server it does not trust (webhooks), a pool can take `addresses`, which resolves (and
vets) the host at every new connection, and `max_answer`: an answer longer than that is cut
there (the connection is closed), so a server cannot make it hold an endless body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

MAX_HEAD = 64 * 1024  # status line and headers; SES answers with a few hundred bytes


class NotSent(Exception):
    """The request did not leave: nothing of it was written."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class MaybeSent(Exception):
    """The request was written; its answer was lost."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class _Malformed(Exception):
    pass


def parse_answer(buffer: bytes | bytearray, *, at_eof: bool = False) -> tuple[Answer, int] | None:
    """The first whole answer in `buffer` and its length, or None while more bytes are due.
    `at_eof`: the peer closed, so an answer without a length ends here. Raises `_Malformed`."""
    head = _parse_head(buffer)
    if head is None:
        return None
    status, headers, keep_alive, start = head
    if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
        rest = parse_answer(buffer[start:], at_eof=at_eof)
        return None if rest is None else (rest[0], start + rest[1])
    framed = _body(buffer, start, status, headers, at_eof=at_eof)
    if framed is None:
        return None
    body, end, until_close = framed
    return Answer(status, headers, body, keep_alive and not until_close), end


def _parse_head(buffer: bytes | bytearray) -> tuple[int, dict[str, str], bool, int] | None:
    """Status, headers (lower-case names), keep-alive and where the body starts."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise _Malformed("answer head too long")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _Malformed(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _Malformed(f"bad header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep_alive = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return int(parts[1]), headers, keep_alive, end + 4


def _body(
    buffer: bytes | bytearray, start: int, status: int, headers: dict[str, str], *, at_eof: bool
) -> tuple[bytes, int, bool] | None:
    """The body, where the answer ends, and whether it ran until the server closed."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _dechunk(buffer, start)
        return None if chunked is None else (*chunked, False)
    if "content-length" in headers:
        try:
            size = int(headers["content-length"])
        except ValueError as exc:
            raise _Malformed("bad Content-Length") from exc
        if len(buffer) - start < size:
            return None
        return bytes(buffer[start : start + size]), start + size, False
    if status in (204, 304):
        return b"", start, False
    if not at_eof:  # the body runs until the server closes
        return None
    return bytes(buffer[start:]), len(buffer), True


def _dechunk(buffer: bytes | bytearray, at: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise _Malformed("bad chunk size") from exc
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            return bytes(body), trailer_end + 4
        if len(buffer) < at + size + 2:
            return None
        body += buffer[at : at + size]
        at += size + 2


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, max_answer: int | None = None) -> None:
        self.max_answer = max_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self._try_parse(at_eof=False)

    def eof_received(self) -> bool | None:
        self._try_parse(at_eof=True)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._try_parse(at_eof=True)
        if self.waiter is not None and not self.waiter.done():
            reason = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
            self.waiter.set_exception(MaybeSent("ConnectionLost", reason))

    def _try_parse(self, *, at_eof: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_answer(self.buffer, at_eof=at_eof)
        except _Malformed as exc:
            waiter.set_exception(MaybeSent("MalformedAnswer", str(exc)))
            self.close()
            return
        if parsed is not None:
            answer, length = parsed
            del self.buffer[:length]
            waiter.set_result(answer)
        elif self.max_answer is not None and len(self.buffer) > self.max_answer:
            self._cut(waiter)

    def _cut(self, waiter: asyncio.Future[Answer]) -> None:
        """An answer longer than `max_answer`: its status and what came of its body, and the
        connection closed (the rest is never read)."""
        try:
            head = _parse_head(self.buffer)
        except _Malformed as exc:
            head = None
            waiter.set_exception(MaybeSent("MalformedAnswer", str(exc)))
        if head is not None:
            status, headers, _, start = head
            body = bytes(self.buffer[start : self.max_answer])
            waiter.set_result(Answer(status, headers, body, keep_alive=False))
        elif not waiter.done():
            waiter.set_exception(MaybeSent("MalformedAnswer", "answer head too long"))
        self.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Up to `limit` keep-alive connections to the origin of `url`."""

    def __init__(  # noqa: PLR0913 (keyword-only options)
        self,
        url: URL,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = 20.0,
        ssl_context: ssl.SSLContext | None = None,
        addresses: Callable[[str, int], Awaitable[list[str]]] | None = None,
        max_answer: int | None = None,
    ) -> None:
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if url.scheme == "https":  # the system's trust store, as aiohttp and botocore use
            self.ssl = ssl_context or ssl.create_default_context()
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.addresses = addresses
        self.max_answer = max(MAX_HEAD, max_answer) if max_answer is not None else None
        self._idle: deque[_Connection] = deque()
        self._open = 0  # connections open or being opened
        self._waiting: deque[asyncio.Future[None]] = deque()  # callers waiting for a connection
        self._closed = False

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """POST `body` to `path` with `headers` (Host included; Content-Length is added); the
        whole answer. Raises `NotSent` or `MaybeSent`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        conn = await self._acquire(deadline)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode(
            "latin-1"
        )
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.waiter = waiter
        conn.buffer.clear()
        assert conn.transport is not None
        conn.transport.writelines((request, body))
        timer = loop.call_later(self.read_timeout, _expire, waiter, self.read_timeout)
        try:
            answer = await waiter
        except BaseException:
            conn.close()  # a half-read answer: the connection is unusable
            self._release(conn)
            raise
        finally:
            timer.cancel()
        conn.waiter = None
        if not answer.keep_alive or conn.buffer:
            conn.close()
        self._release(conn)
        return answer

    async def _acquire(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:  # waited for a connection as long as connecting may take
                raise NotSent("ConnectError", f"no connection free within {self.connect_timeout}s")
            while self._idle:
                conn = self._idle.pop()  # the most recent: the least likely to be dropped
                if conn.usable and loop.time() - conn.idle_since < self.keepalive:
                    return conn
                conn.close()
                self._open -= 1
            if self._closed:
                raise NotSent("ConnectError", "the client is closed")
            if self._open < self.limit:
                self._open += 1
                try:
                    return await self._connect(deadline)
                except BaseException:
                    self._open -= 1
                    self._notify()
                    raise
            left = deadline - loop.time()
            freed: asyncio.Future[None] = loop.create_future()
            self._waiting.append(freed)
            try:
                await asyncio.wait_for(freed, left)
            except TimeoutError:
                pass  # loop: a connection may have come free anyway, else NotSent
            finally:
                if not freed.done():
                    freed.cancel()

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        left = max(0.001, deadline - loop.time())
        try:
            async with asyncio.timeout(left):
                targets = [self.host]
                if self.addresses is not None:
                    targets = await self.addresses(self.host, self.port)
                conn = await self._connect_first(targets)
        except TimeoutError as exc:
            raise NotSent("ConnectError", f"no connection within {left:.1f}s") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (SSLError)
            raise NotSent("ConnectError", f"{type(exc).__name__}: {exc}") from exc
        return conn

    async def _connect_first(self, targets: list[str]) -> _Connection:
        """A connection to the first of `targets` that takes one (TLS names `self.host`)."""
        loop = asyncio.get_running_loop()
        error: OSError = OSError(f"{self.host} has no address to connect to")
        for target in targets:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_answer),
                    target,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
                return conn
            except OSError as exc:
                error = exc
        raise error

    def _release(self, conn: _Connection) -> None:
        if conn.usable and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._notify()

    def _notify(self) -> None:
        """Wake the longest waiting caller: a connection is idle, or one may be opened."""
        while self._waiting:
            freed = self._waiting.popleft()
            if not freed.done():
                freed.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection; busy ones close as their request ends. Calling it twice
        is harmless; the pool cannot be used again."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1


def _expire(waiter: asyncio.Future[Any], after: float) -> None:
    if not waiter.done():
        waiter.set_exception(MaybeSent("Timeout", f"no whole answer within {after}s"))

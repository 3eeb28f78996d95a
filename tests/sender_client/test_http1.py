"""The send path's HTTP/1.1 client: answers framed every way a server may frame them, and every
failure told apart as "certainly not sent" or "maybe sent", against real sockets."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from sesflow.cli.embedded import free_port
from sesflow.common.http1 import Http1Pool, MaybeSent, NotSent, _Malformed, parse_answer

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
)

# --- framing ---------------------------------------------------------------------------------


def test_a_content_length_answer() -> None:
    parsed = parse_answer(OK + b"HTTP/1.1")
    assert parsed is not None
    answer, length = parsed
    assert (answer.status, answer.body, answer.keep_alive, length) == (200, b"{}", True, len(OK))
    assert answer.get("Content-Type") == "application/json"


def test_a_chunked_answer() -> None:
    parsed = parse_answer(CHUNKED)
    assert parsed is not None and parsed[0].body == b"Wikipedia" and parsed[1] == len(CHUNKED)


@given(st.sampled_from([OK, CHUNKED]), st.data())
def test_an_answer_split_anywhere_is_whole_only_at_its_end(raw: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    assert parse_answer(raw[:cut]) is None
    assert parse_answer(raw) is not None


def test_an_interim_answer_is_skipped() -> None:
    parsed = parse_answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert parsed is not None and parsed[0].status == 200


def test_connection_close_and_http_1_0_are_not_kept_alive() -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    for raw in (closing, OK.replace(b"HTTP/1.1", b"HTTP/1.0")):
        parsed = parse_answer(raw)
        assert parsed is not None and not parsed[0].keep_alive


def test_an_answer_without_a_length_ends_when_the_server_closes() -> None:
    raw = b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert parse_answer(raw) is None
    parsed = parse_answer(raw, at_eof=True)
    assert parsed is not None and parsed[0].body == b"body" and not parsed[0].keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000,
    ],
)
def test_what_is_not_http_is_malformed(raw: bytes) -> None:
    with pytest.raises(_Malformed):
        parse_answer(raw)


# --- a server that misbehaves on cue ---------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.handler: Handler = self.answer_ok

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def answer_ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await self.read_request(reader)
            writer.write(OK)
            await writer.drain()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: what the test is about
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, URL]]:
    state = Server()
    listening = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield state, URL(f"http://127.0.0.1:{port}")
    finally:
        listening.close()
        await listening.wait_closed()


def pool(url: URL, **options: float) -> Http1Pool:
    settings = {"limit": 2, "connect_timeout": 1.0, "read_timeout": 1.0, **options}
    return Http1Pool(url, **settings)  # type: ignore[arg-type]


HEADERS = {"Host": "ses.test", "Content-Type": "application/json"}


async def test_requests_reuse_one_connection(server: tuple[Server, URL]) -> None:
    state, url = server
    client = pool(url)
    try:
        for n in range(3):
            answer = await client.post("/v2/email/outbound-emails", HEADERS, b'{"n":%d}' % n)
            assert (answer.status, answer.body) == (200, b"{}")
    finally:
        await client.close()
    assert state.connections == 1
    assert state.requests[0].startswith(
        b"POST /v2/email/outbound-emails HTTP/1.1\r\nHost: ses.test"
    )
    assert state.requests[2].endswith(b'\r\nContent-Length: 7\r\n\r\n{"n":2}')


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: tuple[Server, URL],
) -> None:
    state, url = server

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        writer.write(OK)
        await writer.drain()  # then close, as a server does with an idle keep-alive connection

    state.handler = answer_once
    client = pool(url)
    try:
        await client.post("/", HEADERS, b"{}")
        await asyncio.sleep(0.1)  # the close reaches the client
        assert (await client.post("/", HEADERS, b"{}")).status == 200
    finally:
        await client.close()
    assert state.connections == 2


async def test_idle_connections_older_than_the_keepalive_are_not_reused(
    server: tuple[Server, URL],
) -> None:
    state, url = server
    client = pool(url, keepalive=0.05)
    try:
        await client.post("/", HEADERS, b"{}")
        await asyncio.sleep(0.1)
        await client.post("/", HEADERS, b"{}")
    finally:
        await client.close()
    assert state.connections == 2


async def test_refused_is_not_sent() -> None:
    client = pool(URL(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(NotSent) as raised:
        await client.post("/", HEADERS, b"{}")
    assert raised.value.code == "ConnectError"


async def test_a_reset_after_the_request_is_maybe_sent(server: tuple[Server, URL]) -> None:
    state, url = server

    async def read_and_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        writer.transport.abort()

    state.handler = read_and_drop
    client = pool(url)
    try:
        with pytest.raises(MaybeSent) as raised:
            await client.post("/", HEADERS, b"{}")
    finally:
        await client.close()
    assert raised.value.code == "ConnectionLost"
    assert len(state.requests) == 1


async def test_a_truncated_answer_is_maybe_sent(server: tuple[Server, URL]) -> None:
    state, url = server

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        writer.write(OK[:-1])
        await writer.drain()

    state.handler = half
    client = pool(url)
    try:
        with pytest.raises(MaybeSent) as raised:
            await client.post("/", HEADERS, b"{}")
    finally:
        await client.close()
    assert raised.value.code == "ConnectionLost"


async def test_garbage_is_maybe_sent(server: tuple[Server, URL]) -> None:
    state, url = server

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await reader.read()

    state.handler = garbage
    client = pool(url)
    try:
        with pytest.raises(MaybeSent) as raised:
            await client.post("/", HEADERS, b"{}")
    finally:
        await client.close()
    assert raised.value.code == "MalformedAnswer"


async def test_a_slow_answer_times_out_as_maybe_sent_and_its_connection_goes(
    server: tuple[Server, URL],
) -> None:
    state, url = server
    slow = asyncio.Event()

    async def slow_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        if not slow.is_set():
            slow.set()
            await reader.read()  # never answers this connection
            return
        writer.write(OK)
        await state.answer_ok(reader, writer)

    state.handler = slow_then_ok
    client = pool(url, read_timeout=0.2)
    try:
        with pytest.raises(MaybeSent) as raised:
            await client.post("/", HEADERS, b"{}")
        assert raised.value.code == "Timeout"
        assert (await client.post("/", HEADERS, b"{}")).status == 200
    finally:
        await client.close()
    assert state.connections == 2


async def test_waiting_past_the_connect_timeout_for_a_busy_pool_is_not_sent(
    server: tuple[Server, URL],
) -> None:
    state, url = server

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(OK)
        await writer.drain()

    state.handler = slow
    client = pool(url, limit=1, connect_timeout=0.2)
    try:
        first, second = await asyncio.gather(
            client.post("/", HEADERS, b"{}"),
            client.post("/", HEADERS, b"{}"),
            return_exceptions=True,
        )
    finally:
        await client.close()
    assert not isinstance(first, BaseException) and first.status == 200
    assert isinstance(second, NotSent)
    assert len(state.requests) == 1


async def test_a_freed_connection_goes_to_the_caller_waiting_for_it(
    server: tuple[Server, URL],
) -> None:
    state, url = server
    client = pool(url, limit=1)
    try:
        answers = await asyncio.gather(*(client.post("/", HEADERS, b"{}") for _ in range(5)))
    finally:
        await client.close()
    assert [a.status for a in answers] == [200] * 5
    assert state.connections == 1


async def test_a_cancelled_request_closes_its_connection(server: tuple[Server, URL]) -> None:
    state, url = server
    answered = asyncio.Event()

    async def hold_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state.read_request(reader)
        if not answered.is_set():
            answered.set()
            await reader.read()
            return
        writer.write(OK)
        await state.answer_ok(reader, writer)

    state.handler = hold_first
    client = pool(url, limit=1)
    try:
        request = asyncio.create_task(client.post("/", HEADERS, b"{}"))
        await answered.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        # the late answer of the cancelled request can never be read as this one's
        assert (await client.post("/", HEADERS, b"{}")).status == 200
    finally:
        await client.close()
    assert state.connections == 2


# --- TLS -------------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_is_verified_and_an_untrusted_certificate_is_not_sent(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    state = Server()
    listening = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=served)
    port = listening.sockets[0].getsockname()[1]
    url = URL(f"https://localhost:{port}")
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        untrusted = pool(url)
        with pytest.raises(NotSent) as raised:
            await untrusted.post("/", HEADERS, b"{}")
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
        trusted = Http1Pool(
            url, limit=1, connect_timeout=1.0, read_timeout=1.0, ssl_context=trusting
        )
        try:
            assert (await trusted.post("/", HEADERS, b"{}")).status == 200
        finally:
            await trusted.close()
    finally:
        listening.close()
        await listening.wait_closed()
    assert len(state.requests) == 1

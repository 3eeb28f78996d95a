"""What reaches the HTTP roles as raw bytes, below what an HTTP client lets a test send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app

from support.apptest import AppTestServer

JWT = "a-jwt-secret-of-at-least-32-bytes!"


async def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """Send `data` as is; the status and body of the answer (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "header",
    [
        b"x-api-key: \xff\xfe",
        b"Authorization: Bearer \xff.\xfe.x",
        b"Idempotency-Key: \xc3\x28",
        b"X-Anything: \xed\xa0\x80",
        b"Expect: m\xebm",  # aiohttp's Expect handling runs before routing and middlewares
    ],
)
async def test_a_header_that_is_not_utf8_is_a_400(
    make_settings: Callable[..., Settings], redis: object, header: bytes
) -> None:
    settings = make_settings(API_KEY="the-key-0123456789abcdef", JWT_SECRET=JWT)
    client: TestClient[web.Request, web.Application] = TestClient(
        AppTestServer(create_app(settings), host="127.0.0.1")
    )
    await client.start_server()
    try:
        assert client.server.port is not None
        body = b'{"messages": []}'
        request = (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + header
            + b"\r\nx-api-key: the-key\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        status, answer = await raw_request(client.server.port, request)
    finally:
        await client.close()
    assert status == 400, answer
    assert json.loads(answer)["error"] == "invalid_header"

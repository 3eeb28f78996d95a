"""A request body that trickles in is cut off with a 408 JSON answer instead of holding the
connection (and its buffer) for ever."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestServer

import common.http
from ingest.api import create_app


async def test_a_trickling_body_gets_408(make_settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(common.http, "BODY_READ_TIMEOUT", 0.5)
    server = TestServer(create_app(make_settings()))
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"messages": ['
        )
        await writer.drain()  # ... and nothing more
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 408")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), timeout=10))
        assert body["error"] == "body_timeout"
        writer.close()
    finally:
        await server.close()

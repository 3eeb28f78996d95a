"""A request body that trickles in is cut off with a 408 JSON answer instead of holding the
connection (and its buffer) for ever."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

import sesflow.common.http
from sesflow.cli.embedded import free_port
from sesflow.ingest.api import create_app


async def stalled_post(make_settings: Any, path: str) -> tuple[bytes, dict[str, Any]]:
    """POST a body that stops after its first bytes; the status line and the JSON answer."""
    server = TestServer(create_app(make_settings(TRACKER_URL=f"http://127.0.0.1:{free_port()}")))
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n"
            + b'{"messages": ['
        )
        await writer.drain()  # ... and nothing more
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        headers = dict(
            line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
        )
        length = int(headers[b"content-length"])
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), timeout=10))
        writer.close()
        return head.split(b"\r\n", 1)[0], body
    finally:
        await server.close()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/events/result"])
async def test_a_trickling_body_gets_408(make_settings: Any, monkeypatch: Any, path: str) -> None:
    """Ingest's own API and the compatibility paths it forwards to the tracker alike."""
    monkeypatch.setattr(sesflow.common.http, "BODY_READ_TIMEOUT", 0.5)
    status, body = await stalled_post(make_settings, path)
    assert status.startswith(b"HTTP/1.1 408")
    assert body["error"] == "body_timeout"

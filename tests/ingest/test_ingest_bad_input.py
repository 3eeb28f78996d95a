"""Bad input on the ingest API is a 4xx JSON error and writes nothing: bytes that are not UTF-8,
nesting deeper than the decoder can follow, wrong types, and what aiohttp's parser refuses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings

VALID = b'{"messages":[{"topic_id":"t","emails":["a@x.io"],"subject":"s","content":"c"}]}'


async def expect_json_error(resp: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert isinstance(body["error"], str) and body["error"] and "detail" in body
    if error is not None:
        assert body["error"] == error, body
    return body


@pytest.mark.parametrize(
    "raw",
    [
        VALID.replace(b'"t"', b'"t\xff"'),
        VALID.replace(b'"c"', b'"\xc3\x28"'),
        VALID.replace(b'"s"', b'"\xed\xa0\x80"'),  # a UTF-16 surrogate encoded as UTF-8
        VALID.replace(b'"topic_id"', b'"topic\xff"'),
        b"[" * 200_000 + b"]" * 200_000,
        b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["topic", "content", "surrogate", "key", "nesting", "nested-messages"],
)
async def test_undecodable_body_is_a_400_and_nothing_is_written(
    http: Any, redis: Any, keys: Keys, raw: bytes
) -> None:
    resp = await http.post("/v1/messages", data=raw, headers={"Content-Type": "application/json"})
    await expect_json_error(resp, 400, "invalid_json")
    assert await redis.exists(keys.requests) == 0
    assert (await http.get("/health")).status == 200


async def test_a_suppression_reason_that_is_not_utf8_is_refused(http: Any, redis: Any) -> None:
    for raw in (b'{"reason":"\xff"}', b'{"detail":"\xc3\x28"}', b"[" * 60_000):
        resp = await http.put("/v1/suppressions/a@x.io", data=raw)
        await expect_json_error(resp, 400, "invalid_json")
    assert await redis.keys("*") == []


@pytest.mark.parametrize("name", ["topic_id", "topicId"])
async def test_a_number_is_not_a_topic_id(http: Any, redis: Any, keys: Keys, name: str) -> None:
    raw = VALID.replace(b'"topic_id":"t"', f'"{name}":5'.encode())
    body = await expect_json_error(await http.post("/v1/messages", data=raw), 400, "invalid_type")
    assert name in body["detail"]
    assert await redis.exists(keys.requests) == 0


async def test_the_go_services_numeric_plan_id_is_kept_as_text(http: Any) -> None:
    raw = VALID.replace(b'"topic_id":"t"', b'"planId":42')
    resp = await http.post("/v1/messages", data=raw)
    assert resp.status == 202
    assert (await resp.json())["messages"][0]["topic_id"] == "42"
    for plan in (b"4.2", b"true", b"-1", b"1" + b"0" * 5000):
        resp = await http.post("/v1/messages", data=raw.replace(b"42", plan, 1))
        await expect_json_error(resp, 400)


async def test_a_url_over_8k_is_a_json_400(http: Any) -> None:
    resp = await http.get("/v1/suppressions/" + "a" * 9000 + "@x.io")
    await expect_json_error(resp, 400, "bad_request")


async def test_a_header_too_large_is_a_json_400(http: Any) -> None:
    resp = await http.get("/health", headers={"X-Big": "a" * 9000})
    await expect_json_error(resp, 400, "bad_request")


async def test_a_wrong_method_is_a_json_405_with_allow(http: Any) -> None:
    resp = await http.patch("/v1/messages")
    await expect_json_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"


async def test_sns_bytes_that_are_not_utf8_through_the_forward(
    api_client: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    redis: Any,
) -> None:
    """The older services' single base URL forwards the SNS webhook to a real tracker."""
    from aiohttp.test_utils import TestClient

    from sesflow.tracker.app import create_app as create_tracker

    from support.apptest import AppTestServer

    tracker = TestClient(AppTestServer(create_tracker(make_settings()), host="127.0.0.1"))
    await tracker.start_server()
    try:
        url = str(tracker.make_url("")).rstrip("/")
        async with api_client(make_settings(TRACKER_URL=url)) as http:
            for raw in (b'{"Type":"Notification","Message":"\xff"}', b"[" * 200_000):
                resp = await http.post("/v1/events/results", data=raw)
                await expect_json_error(resp, 400, "malformed")
    finally:
        await tracker.close()
    assert await redis.keys("*") == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_body_that_does_not_match_its_encoding_is_a_400(
    http: Any, redis: Any, keys: Keys, encoding: str
) -> None:
    resp = await http.post("/v1/messages", data=VALID, headers={"Content-Encoding": encoding})
    # br is refused by aiohttp's parser when Brotli is not installed, before the handler reads.
    await expect_json_error(resp, 400, "invalid_body" if encoding != "br" else None)
    assert await redis.exists(keys.requests) == 0


async def test_an_unread_body_that_cannot_be_decoded_closes_the_connection_cleanly(
    http: Any,
) -> None:
    """aiohttp drops such a connection after the answer; the answer says so, and the next
    request (on a new connection) is served."""
    for _ in range(3):
        resp = await http.get(
            "/v1/suppressions", data=b"not gzip", headers={"Content-Encoding": "gzip"}
        )
        assert resp.status == 200 and resp.headers["Connection"] == "close"
        resp = await http.post("/v1/messages", data=b"xx", headers={"Content-Encoding": "gzip"})
        await expect_json_error(resp, 400, "invalid_body")
        assert resp.headers["Connection"] == "close"
        assert (await http.get("/health")).status == 200


async def test_a_refused_request_whose_body_never_decodes_does_not_hold_its_connection(
    http: Any,
) -> None:
    """Refused before its body is read (a header that is not UTF-8), a large body whose
    Content-Encoding never decodes to an end: the answer comes at once and the connection
    closes within the linger, not after aiohttp's 10 s."""
    import asyncio
    import time

    from sesflow.common.http import LINGER_S

    depth = 20_000
    body = ('{"a":' * depth + "1" + "}" * depth).encode()
    head = [
        b"POST /v1/messages HTTP/1.1",
        b"Host: test",
        b"Authorization: Bearer \xff",
        b"Content-Encoding: deflate",
        b"Content-Length: %d" % len(body),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", http.server.port)
    try:
        started = time.monotonic()
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3 * LINGER_S)
        took = time.monotonic() - started
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"invalid_header"' in answer
    assert took < LINGER_S + 1.0, took


async def test_raw_bytes_in_a_url_are_a_json_400(http: Any) -> None:
    from yarl import URL

    resp = await http.get(URL("/v1/suppressions?limit=\u00e9", encoded=True))
    await expect_json_error(resp, 400, "bad_request")


async def test_a_malformed_request_is_not_logged_as_an_error(
    http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The internet sends plenty of these; an ERROR with a traceback each would flood Sentry."""
    with caplog.at_level(logging.DEBUG):
        for resp in (
            await http.get("/health", headers={"X-Big": "a" * 9000}),
            await http.get("/v1/suppressions/" + "a" * 9000),
            await http.request("FOO", "/health"),
        ):
            await expect_json_error(resp, 400, "bad_request")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "9" * 5000, "1e3", "-1", "%205", "1_0"])
async def test_a_page_parameter_that_is_not_ascii_digits_is_a_400(http: Any, value: str) -> None:
    from yarl import URL

    for name in ("cursor", "limit"):
        resp = await http.get(URL(f"/v1/suppressions?{name}={value}", encoded=True))
        await expect_json_error(resp, 400, "invalid_parameter")


async def test_an_unknown_expect_is_a_json_417(http: Any) -> None:
    """aiohttp answers it outside every middleware."""
    resp = await http.post("/v1/messages", data=VALID, headers={"Expect": "a-miracle"})
    body = await expect_json_error(resp, 417, "expectation_failed")
    assert "a-miracle" in body["detail"]

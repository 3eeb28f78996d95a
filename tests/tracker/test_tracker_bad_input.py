"""The SNS webhook answers bytes it cannot read with a 400 JSON error, never a 500."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Type":"Notification","Message":"\xff"}',
        b'{"Type":"Notification","Message":"\xc3\x28","MessageId":"m"}',
        b'{"Type":"Notification\xff"}',
        b"[" * 200_000 + b"]" * 200_000,
        b'{"Type":"Notification","Message":' + b"[" * 100_000 + b"}",
    ],
    ids=["message", "message-2", "type", "nesting", "nested-message"],
)
async def test_undecodable_sns_body_is_a_400(tracker: Any, redis: Any, raw: bytes) -> None:
    resp = await tracker.post("/v1/events/results", data=raw)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["error"] == "malformed" and body["detail"]
    assert [k for k in await redis.keys("*") if "secret" not in k] == []
    assert (await tracker.get("/health")).status == 200


async def test_a_url_over_8k_is_a_json_400(tracker: Any) -> None:
    resp = await tracker.get("/v1/events/open?t=" + "a" * 9000)
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"


async def test_an_unsigned_open_with_odd_digits_is_still_a_pixel(
    make_settings: Any, start_tracker: Any, redis: Any
) -> None:
    """`str.isdigit()` takes "²" and "٣", which `int()` refuses or reads; a request id's index
    is ASCII digits only."""
    from yarl import URL

    async with start_tracker(make_settings(ALLOW_UNSIGNED_OPENS="1")) as client:
        for rid in ("1-0_%C2%B2", "1-0_" + "9" * 5000, "1-0_%D9%A3"):
            resp = await client.get(URL(f"/v1/events/open?requestId={rid}", encoded=True))
            assert resp.status == 200
            assert resp.content_type == "image/gif"


async def test_a_body_its_encoding_fails_only_at_the_end_is_a_400_not_a_hang(tracker: Any) -> None:
    """aiohttp's parser finds such a body broken only at its end, after the handler has begun
    reading it; the read used to wait forever."""
    import asyncio

    body = b'{"a":' * 50_000  # read as raw deflate, it ends in the middle of a block
    resp = await asyncio.wait_for(
        tracker.post("/v1/events/results", data=body, headers={"Content-Encoding": "deflate"}),
        10,
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_body"
    assert (await tracker.get("/health")).status == 200

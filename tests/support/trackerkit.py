"""What the tracker's tests share: its payload files, an SNS-style POST, the events it wrote."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from sesflow.common.schema import Event, decode_event

from support import TESTS

PAYLOADS = TESTS / "tracker" / "payloads"


def load_payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return data


async def post_sns(client: TestClient[Any, Any], body: dict[str, Any] | str | bytes) -> Any:
    """POST a body as SNS does: JSON text with Content-Type text/plain."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await client.post(
        "/v1/events/results",
        data=data,
        headers={"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "x"},
    )


async def stream_events(redis: Any, stream: str) -> list[Event]:
    return [decode_event(fields["e"]) for _, fields in await redis.xrange(stream)]

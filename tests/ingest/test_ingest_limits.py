"""Per-request limits of POST /v1/messages: what one request may ask for, refused before any
write (one request is one transaction and one idempotency record)."""

from __future__ import annotations

from typing import Any

import pytest

from sesflow.common.keys import Keys
from sesflow.ingest.validation import Limits, validate_body


def message(n: int, emails: int = 1) -> dict[str, Any]:
    return {
        "topic_id": "t",
        "emails": [f"u{n}.{k}@example.com" for k in range(emails)],
        "subject": "s",
        "content": "c",
    }


async def test_too_many_messages_is_413_and_nothing_is_written(
    api_client: Any, make_settings: Any, redis: Any, keys: Keys
) -> None:
    async with api_client(make_settings(MAX_MESSAGES_PER_REQUEST=3)) as http:
        body = {"messages": [message(n) for n in range(4)]}
        resp = await http.post("/v1/messages", json=body, headers={"Idempotency-Key": "big"})
        assert resp.status == 413
        answer = await resp.json()
        assert answer["error"] == "too_many_messages"
        assert "MAX_MESSAGES_PER_REQUEST" in answer["detail"]
        ok = await http.post("/v1/messages", json={"messages": [message(n) for n in range(3)]})
        assert ok.status == 202
    assert await redis.xlen(keys.requests) == 3
    assert await redis.exists(keys.idempotency("big")) == 0


async def test_default_limit_refuses_the_twenty_thousand_message_body(
    http: Any, redis: Any, keys: Keys
) -> None:
    body = {"messages": [message(n) for n in range(20_000)]}
    resp = await http.post("/v1/messages", json=body)
    assert resp.status == 413
    assert (await resp.json())["error"] == "too_many_messages"
    assert await redis.exists(keys.requests) == 0


async def test_too_many_recipients_over_all_messages_is_413(
    api_client: Any, make_settings: Any, redis: Any, keys: Keys
) -> None:
    settings = make_settings(MAX_RECIPIENTS=5, MAX_RECIPIENTS_PER_REQUEST=8)
    async with api_client(settings) as http:
        body = {"messages": [message(n, emails=3) for n in range(3)]}  # 9 > 8, each 3 <= 5
        resp = await http.post("/v1/messages", json=body)
        assert resp.status == 413
        answer = await resp.json()
        assert answer["error"] == "too_many_recipients"
        assert "MAX_RECIPIENTS_PER_REQUEST" in answer["detail"]
        body = {"messages": [message(n, emails=4) for n in range(2)]}
        assert (await http.post("/v1/messages", json=body)).status == 202
    assert await redis.xlen(keys.requests) == 2


def test_limits_are_checked_before_each_message_is_parsed() -> None:
    """A body over the count is refused as such, not for the first bad message in it."""
    limits = Limits(max_recipients=5, max_subject_bytes=20, max_content_bytes=100, max_messages=2)
    raw = b'{"messages": [1, 2, 3]}'
    with pytest.raises(Exception) as caught:
        validate_body(raw, limits)
    assert getattr(caught.value, "status", None) == 413


@pytest.mark.parametrize(
    "name", ["MAX_MESSAGES_PER_REQUEST", "MAX_RECIPIENTS_PER_REQUEST", "MAX_RECIPIENTS"]
)
def test_a_limit_below_one_is_a_config_error(name: str) -> None:
    from sesflow.common.errors import ConfigError
    from sesflow.common.settings import settings_from_mapping

    with pytest.raises(ConfigError, match=name):
        settings_from_mapping({name: "0"})

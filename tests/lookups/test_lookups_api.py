"""The look-up routes against a real archive, on SQLite and on Postgres: shapes, keyset pages
that neither skip nor repeat a row, and every way a client can get them wrong (400, 404, 503)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.cli.embedded import free_port
from sesflow.common.settings import Settings
from sesflow.stats.api import create_app
from sesflow.stats.archive.db import connect_archive

from support.apptest import AppTestServer
from support.archivefill import add_rows, event

T0 = 1_750_000_000_000
API_KEY = "lookup-test-key-0123456789abcdef"
HEADERS = {"x-api-key": API_KEY}

# Message m1 (topic spring, 5 recipients), m2 (spring, 3), m3 (digest, 1).
MESSAGES = [
    ("m1", "spring", "Spring sale", "bulk", 5, T0, None),
    ("m2", "spring", "Spring, again", "bulk", 3, T0 + 60_000, T0 + 3_600_000),
    ("m3", "digest", "Weekly digest", "transactional", 1, T0 + 1000, None),
]
M1_STATES = ["delivered", "bounced", "opened", "delivered", "queued"]


def recipient(msg: str, idx: int, email: str, state: str, at: int) -> tuple[Any, ...]:
    sent = at - 500 if state != "queued" else None
    ses = f"ses-{msg}-{idx}" if sent else ""
    return (msg, idx, email, state, 3, ses, state, at, sent, at)


RECIPIENTS = [
    *(
        recipient("m1", i, "ada@example.com" if i == 0 else f"r{i}@example.com", s, T0 + 10 + i)
        for i, s in enumerate(M1_STATES)
    ),
    *(recipient("m2", i, f"s{i}@example.com", "sent", T0 + 60_100) for i in range(3)),
    recipient("m3", 0, "ada@example.com", "delivered", T0 + 2000),
]
# ada@example.com: m1 (accepted, sent, delivered, opened twice at the same ms), m3 (sent, delivered)
ADA_EVENTS = [
    event(
        0, f"{T0}-0", T0, "accepted", topic="spring", msg_id="m1", idx=0, email="ada@example.com"
    ),
    event(
        0,
        f"{T0 + 5}-0",
        T0 + 5,
        "sent",
        topic="spring",
        msg_id="m1",
        idx=0,
        email="ada@example.com",
        ses_id="ses-m1-0",
    ),
    event(
        1,
        f"{T0 + 8}-0",
        T0 + 8,
        "delivered",
        topic="spring",
        msg_id="m1",
        idx=0,
        email="ada@example.com",
        ses_id="ses-m1-0",
    ),
    event(
        0,
        f"{T0 + 9}-0",
        T0 + 9,
        "opened",
        topic="spring",
        msg_id="m1",
        idx=0,
        email="ada@example.com",
    ),
    event(
        1,
        f"{T0 + 9}-0",
        T0 + 9,
        "clicked",
        topic="spring",
        msg_id="m1",
        idx=0,
        email="ada@example.com",
        url="https://shop.example.com/sale",
    ),
    event(
        0,
        f"{T0 + 1500}-0",
        T0 + 1500,
        "sent",
        topic="digest",
        msg_id="m3",
        idx=0,
        email="ada@example.com",
        ses_id="ses-m3-0",
    ),
    event(
        0,
        f"{T0 + 2000}-0",
        T0 + 2000,
        "delivered",
        topic="digest",
        msg_id="m3",
        idx=0,
        email="ada@example.com",
        ses_id="ses-m3-0",
    ),
]
BOUNCE = event(
    0,
    f"{T0 + 11}-0",
    T0 + 11,
    "bounced",
    topic="spring",
    msg_id="m1",
    idx=1,
    email="r1@example.com",
    bounce_type="Permanent",
    bounce_subtype="General",
    detail="smtp; 550 5.1.1 user unknown",
)
GRACE = event(
    0, f"{T0 + 3}-0", T0 + 3, "sent", topic="digest", msg_id="m3", idx=0, email="Grace@Example.com"
)
TOPICS = [("spring", T0, T0 + 60_000, 2), ("digest", T0 + 1000, T0 + 1000, 1)]


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings], archive_url: str
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(ARCHIVE_URL=archive_url, API_KEY=API_KEY)
    db = await connect_archive(settings)
    try:
        await add_rows(db, "messages", MESSAGES)
        await add_rows(db, "recipients", RECIPIENTS)
        await add_rows(db, "events", [*ADA_EVENTS, BOUNCE, GRACE])
        await add_rows(db, "topics", TOPICS)
    finally:
        await db.close()
    client: TestClient[Any, Any] = TestClient(AppTestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def get(api: TestClient[Any, Any], path: str, status: int = 200, **params: Any) -> Any:
    resp = await api.get(path, params={k: str(v) for k, v in params.items()}, headers=HEADERS)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def every_page(api: TestClient[Any, Any], path: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    for _ in range(100):
        page = await get(api, path, **params, **({"cursor": cursor} if cursor else {}))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == params["limit"]
    raise AssertionError(f"{path} paged for ever")


async def test_a_message_and_its_counts_by_state(api: TestClient[Any, Any]) -> None:
    body = await get(api, "/v1/messages/m2")
    assert body == {
        "id": "m2",
        "topic_id": "spring",
        "subject": "Spring, again",
        "lane": "bulk",
        "total": 3,
        "accepted_at": T0 + 60_000,
        "scheduled_at": T0 + 3_600_000,
        "counts": {"sent": 3},
    }
    m1 = await get(api, "/v1/messages/m1")
    assert m1["counts"] == {"delivered": 2, "bounced": 1, "opened": 1, "queued": 1}
    assert m1["scheduled_at"] is None


async def test_recipients_page_by_index_without_gaps_or_repeats(api: TestClient[Any, Any]) -> None:
    everyone = await every_page(api, "/v1/messages/m1/recipients", limit=2)
    assert [r["index"] for r in everyone] == [0, 1, 2, 3, 4]
    assert [r["state"] for r in everyone] == M1_STATES
    assert everyone[0] == {
        "index": 0,
        "email": "ada@example.com",
        "state": "delivered",
        "ses_id": "ses-m1-0",
        "last_event": "delivered",
        "last_event_at": T0 + 10,
        "sent_at": T0 + 10 - 500,
        "updated_at": T0 + 10,
    }
    assert everyone[4]["ses_id"] is None and everyone[4]["sent_at"] is None  # still queued
    delivered = await every_page(api, "/v1/messages/m1/recipients", limit=1, state="delivered")
    assert [r["index"] for r in delivered] == [0, 3]
    one_page = await get(api, "/v1/messages/m1/recipients")
    assert len(one_page["items"]) == 5 and one_page["next_cursor"] is None
    assert one_page["message_id"] == "m1"
    # A state nobody is in: an empty page, not a 404 (the message exists).
    none = await get(api, "/v1/messages/m1/recipients", state="complained")
    assert none["items"] == [] and none["next_cursor"] is None


async def test_an_address_timeline_newest_first_across_messages(api: TestClient[Any, Any]) -> None:
    whole = await get(api, "/v1/recipients/ada@example.com/events")
    kinds = [(e["message_id"], e["type"]) for e in whole["items"]]
    # Newest first; the open and the click share a millisecond: the stream's order, reversed.
    assert kinds == [
        ("m3", "delivered"),
        ("m3", "sent"),
        ("m1", "clicked"),
        ("m1", "opened"),
        ("m1", "delivered"),
        ("m1", "sent"),
        ("m1", "accepted"),
    ]
    assert whole["items"][2] == {
        "type": "clicked",
        "at": T0 + 9,
        "topic_id": "spring",
        "message_id": "m1",
        "index": 0,
        "url": "https://shop.example.com/sale",
    }
    # One event a page walks the same order, through the tie too.
    paged = await every_page(api, "/v1/recipients/ada@example.com/events", limit=1)
    assert paged == whole["items"]
    # `since` (epoch ms, epoch s or RFC 3339) keeps the newer ones; the address's case is no matter.
    recent = await get(api, "/v1/recipients/Ada@Example.COM/events", since=T0 + 9)
    assert [e["type"] for e in recent["items"]] == ["delivered", "sent", "clicked", "opened"]
    assert recent["email"] == "Ada@Example.COM"
    # An address archived with capitals (as it was sent to) is found as it was sent.
    grace = await get(api, "/v1/recipients/Grace@Example.com/events")
    assert [e["type"] for e in grace["items"]] == ["sent"]
    bounce = (await get(api, "/v1/recipients/r1@example.com/events"))["items"]
    assert bounce == [
        {
            "type": "bounced",
            "at": T0 + 11,
            "topic_id": "spring",
            "message_id": "m1",
            "index": 1,
            "detail": "smtp; 550 5.1.1 user unknown",
            "bounce_type": "Permanent",
            "bounce_subtype": "General",
        }
    ]
    # Known address, nothing in the span: empty, not a 404.
    later = await get(api, "/v1/recipients/ada@example.com/events", since="2099-01-01T00:00:00Z")
    assert later["items"] == []


async def test_topics_most_recent_first_and_a_topics_messages(api: TestClient[Any, Any]) -> None:
    topics = await every_page(api, "/v1/topics", limit=1)
    assert topics == [
        {"topic_id": "spring", "first_at": T0, "last_at": T0 + 60_000, "messages": 2},
        {"topic_id": "digest", "first_at": T0 + 1000, "last_at": T0 + 1000, "messages": 1},
    ]
    messages = await every_page(api, "/v1/topics/spring/messages", limit=1)
    assert [m["id"] for m in messages] == ["m2", "m1"]
    assert messages[1]["subject"] == "Spring sale" and messages[1]["total"] == 5


async def test_the_counters_routes_still_answer_beside_the_look_ups(
    api: TestClient[Any, Any],
) -> None:
    """`/v1/topics/{id}` (Redis counters) keeps its meaning next to `/v1/topics/{id}/messages`."""
    resp = await api.get("/v1/topics/never-counted", headers=HEADERS)
    assert resp.status == 404
    assert (await resp.json())["detail"] == "no statistics for topic 'never-counted'"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v1/messages/nope", "not_found"),
        ("/v1/messages/nope/recipients", "not_found"),
        ("/v1/recipients/nobody@example.com/events", "not_found"),
        ("/v1/topics/nope/messages", "not_found"),
    ],
)
async def test_unknown_ids_are_404(api: TestClient[Any, Any], path: str, error: str) -> None:
    body = await get(api, path, status=404)
    assert body["error"] == error and body["detail"]


def forged(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/v1/topics", {"limit": "0"}, "invalid_parameter"),
        ("/v1/topics", {"limit": "501"}, "invalid_parameter"),
        ("/v1/topics", {"limit": "ten"}, "invalid_parameter"),
        ("/v1/topics", {"cursor": "not base64 !"}, "invalid_cursor"),
        ("/v1/topics", {"cursor": forged(["t", "x", "spring"])}, "invalid_cursor"),
        ("/v1/topics", {"cursor": forged(["t", True, "spring"])}, "invalid_cursor"),
        ("/v1/topics", {"cursor": forged(["t", 2**70, "spring"])}, "invalid_cursor"),
        ("/v1/topics", {"cursor": forged({"t": 1})}, "invalid_cursor"),
        ("/v1/topics", {"cursor": "x" * 3000}, "invalid_cursor"),
        # A cursor of another route.
        ("/v1/messages/m1/recipients", {"cursor": forged(["t", 1, "spring"])}, "invalid_cursor"),
        ("/v1/messages/m1/recipients", {"state": "lost"}, "invalid_parameter"),
        ("/v1/recipients/not-an-address/events", {}, "invalid_address"),
        ("/v1/recipients/ada@example.com/events", {"since": "yesterday"}, "invalid_parameter"),
        ("/v1/recipients/ada@example.com/events", {"since": "-5"}, "invalid_parameter"),
        ("/v1/messages/" + "m" * 201, {}, "invalid_parameter"),
    ],
)
async def test_bad_parameters_are_400_json(
    api: TestClient[Any, Any], path: str, params: dict[str, str], error: str
) -> None:
    body = await get(api, path, status=400, **params)
    assert body["error"] == error and body["detail"], body


async def test_the_look_ups_need_the_stats_credentials(api: TestClient[Any, Any]) -> None:
    for path in ("/v1/messages/m1", "/v1/topics", "/v1/recipients/ada@example.com/events"):
        resp = await api.get(path)
        assert resp.status == 401, path


async def test_archive_off_answers_503_with_the_reason(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(ARCHIVE="off"))
    async with TestClient(AppTestServer(app)) as client:
        for path in ("/v1/messages/m1", "/v1/topics", "/v1/recipients/a@example.com/events"):
            resp = await client.get(path)
            body = await resp.json()
            assert resp.status == 503, body
            assert body["error"] == "archive_off" and "ARCHIVE=off" in body["detail"]
        # The counters are still served.
        assert (await client.get("/v1/stats/overview")).status == 200


async def test_an_unreachable_archive_answers_503_and_stats_keeps_serving(
    make_settings: Callable[..., Settings],
) -> None:
    closed = free_port()
    settings = make_settings(ARCHIVE_URL=f"postgresql://sesflow@127.0.0.1:{closed}/none")
    async with TestClient(AppTestServer(create_app(settings))) as client:
        resp = await client.get("/v1/messages/m1")
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"] == "archive_unavailable" and "postgres" in body["detail"]
        assert (await client.get("/v1/stats/overview")).status == 200

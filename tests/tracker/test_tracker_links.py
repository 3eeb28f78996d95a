"""Opens, clicks and unsubscribes: signed tokens count, forged ones never do; unique opens and
clicks; redirects only to the sealed URL; one-click unsubscribe suppresses at once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.cli.embedded import free_port
from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList
from sesflow.common.tracking import Token, link_token, sign
from sesflow.tracker.pages import PIXEL

from support.promtext import metric
from support.trackerkit import stream_events

SECRET = b"test-tracking-secret"  # the TRACKING_SECRET of the test settings
KEYS = Keys()
P0 = KEYS.partition(0)
MSG = "1732461234567-0"
TOPIC = "news"


def token(kind: str, index: int = 0, secret: bytes = SECRET, **extra: str) -> str:
    return sign(secret, Token(k=kind, r=f"{MSG}_{index}", t=TOPIC, **extra))


def tampered(text: str, **changes: str) -> str:
    """The same MAC over a changed payload."""
    payload_b64, _, mac = text.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{raw}.{mac}"


async def get_open(client: TestClient[Any, Any], query: dict[str, str]) -> None:
    resp = await client.get("/v1/events/open", params=query)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/gif"
    assert "no-cache" in resp.headers["Cache-Control"]
    assert "no-store" in resp.headers["Cache-Control"]
    assert await resp.read() == PIXEL


def test_pixel_is_a_1x1_gif() -> None:
    assert PIXEL.startswith(b"GIF89a\x01\x00\x01\x00")
    assert PIXEL.endswith(b";")


async def test_valid_open_is_counted_and_unique_once(
    tracker: TestClient[Any, Any], redis: Any
) -> None:
    await get_open(tracker, {"t": token("o", 0)})
    await get_open(tracker, {"t": token("o", 0)})
    await get_open(tracker, {"t": token("o", 1)})
    events = await stream_events(redis, P0.events)
    assert [(e.type, e.index, e.unique, e.topic, e.msg_id) for e in events] == [
        ("opened", 0, True, TOPIC, MSG),
        ("opened", 0, False, TOPIC, MSG),
        ("opened", 1, True, TOPIC, MSG),
    ]
    assert await redis.ttl(P0.touches(MSG)) > 0


@pytest.mark.parametrize(
    "query",
    [
        {"t": tampered(token("o", 0), r=f"{MSG}_7")},  # altered request id
        {"t": token("o", 0, secret=b"someone-else")},  # forged with another key
        {"t": token("c", 0, u="https://example.com")},  # a click token is not an open
        {"t": "garbage"},
        {"t": ""},
        {"requestId": "12345"},  # the older services' bare ids: off by default
        {"request_id": f"{MSG}_0"},
        {},
    ],
)
async def test_forged_or_altered_open_is_not_counted(
    tracker: TestClient[Any, Any], redis: Any, query: dict[str, str]
) -> None:
    await get_open(tracker, query)
    assert await redis.xlen(P0.events) == 0


async def test_bare_request_ids_count_only_when_allowed(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    await redis.hset(P0.message(MSG), mapping={"topic": TOPIC, "subject": "s", "html": "h"})
    await redis.hset(P0.state(MSG), "3", "s:ses-id-3")  # sent, as an older version wrote it
    async with start_tracker(make_settings(ALLOW_UNSIGNED_OPENS="1")) as client:
        await get_open(client, {"requestId": f"{MSG}_3"})
        await get_open(client, {"request_id": f"{MSG}_3"})
        await get_open(client, {"requestId": "42"})
        await get_open(client, {"t": "forged", "requestId": f"{MSG}_3"})  # a bad token is bad
    a, b, legacy = await stream_events(redis, P0.events)
    assert (a.msg_id, a.index, a.topic, a.unique) == (MSG, 3, TOPIC, True)
    assert (b.index, b.unique) == (3, False)
    assert (legacy.msg_id, legacy.index, legacy.unique) == ("", -1, False)
    assert "42" in legacy.detail


async def test_unsigned_open_of_a_recipient_never_sent_writes_nothing(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    """A bare id is anyone's to make up: only a recipient with a delivery state may count, or
    each made-up id would leave a first-open hash behind for 90 days."""
    await redis.hset(P0.message(MSG), mapping={"topic": TOPIC, "subject": "s", "html": "h"})
    await redis.setrange(P0.finals(MSG), 3, "s")  # recipient 3 was sent; 0 to 2 read 0
    other = "1732461299999-0"
    refused = "sesflow_tracker_invalid_tokens_total"
    async with start_tracker(make_settings(ALLOW_UNSIGNED_OPENS="1")) as client:
        before = await metric(client, refused, kind="open")
        for rid in (f"{MSG}_1", f"{MSG}_4", f"{MSG}_99999999", f"{other}_0", f"{other}_1"):
            await get_open(client, {"requestId": rid})
        after = await metric(client, refused, kind="open")
    assert set(await redis.keys("*")) == {P0.message(MSG), P0.finals(MSG)}  # no event, no mark
    assert after - before == 5


async def test_click_redirects_to_its_sealed_url_and_is_unique_once(
    tracker: TestClient[Any, Any], redis: Any
) -> None:
    url = "https://shop.example.com/offer?id=7&utm_source=mail"
    for _ in range(2):
        resp = await tracker.get(
            "/v1/events/click", params={"t": token("c", 2, u=url)}, allow_redirects=False
        )
        assert resp.status == 302
        assert resp.headers["Location"] == url
    first, again = await stream_events(redis, P0.events)
    assert (first.type, first.index, first.url, first.unique) == ("clicked", 2, url, True)
    assert again.unique is False
    # Clicks and opens are unique separately.
    await get_open(tracker, {"t": token("o", 2)})
    assert (await stream_events(redis, P0.events))[-1].unique is True


async def test_click_of_a_recipient_token_and_a_link_token(
    tracker: TestClient[Any, Any], redis: Any
) -> None:
    """New mail: `t=<recipient token>~<link token>`; the link token seals the URL for the
    message, the recipient token names who clicked. Mail sent before keeps its `c` tokens
    (the test above)."""
    url = "https://shop.example.com/offer?id=7&utm_source=mail"
    text = f"{token('o', 3)}~{link_token(SECRET, MSG, url)}"
    resp = await tracker.get("/v1/events/click", params={"t": text}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == url
    [event] = await stream_events(redis, P0.events)
    assert (event.type, event.index, event.topic, event.url) == ("clicked", 3, TOPIC, url)


@pytest.mark.parametrize(
    "text",
    [
        f"{token('o', 0)}~{link_token(SECRET, '1732461234568-0', 'https://evil.example/')}",
        f"{token('o', 0)}~{link_token(b'other', MSG, 'https://evil.example/')}",
        f"{token('o', 0)}~{tampered(link_token(SECRET, MSG, 'https://a.example/'), u='https://evil.example/')}",
        f"{token('u', 0, e='a@example.com')}~{link_token(SECRET, MSG, 'https://a.example/')}",
        f"{token('o', 0)}~{link_token(SECRET, MSG, 'javascript:alert(1)')}",
        f"{token('o', 0)}~",
        tampered(token("c", 0, u="https://example.com/a"), u="https://evil.example/"),
        token("c", 0, secret=b"other", u="https://evil.example/"),
        token("o", 0),  # an open token carries no URL
        token("c", 0, u="javascript:alert(1)"),
        token("c", 0, u="//evil.example/"),
        token("c", 0, u="https://example.com/\r\nSet-Cookie: x=1"),
        "",
    ],
)
async def test_invalid_click_is_400_never_a_redirect(
    tracker: TestClient[Any, Any], redis: Any, text: str
) -> None:
    resp = await tracker.get("/v1/events/click", params={"t": text}, allow_redirects=False)
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert (await resp.json())["error"] == "invalid_token"
    assert await redis.xlen(P0.events) == 0


async def test_unsubscribe_get_shows_a_confirmation_that_posts(
    tracker: TestClient[Any, Any], redis: Any
) -> None:
    text = token("u", 4, e="reader@example.com")
    resp = await tracker.get("/v1/events/unsubscribe", params={"t": text})
    assert resp.status == 200
    page = await resp.text()
    assert "reader@example.com" in page
    assert "method=post" in page and 'name="List-Unsubscribe" value="One-Click"' in page
    # Link scanners GET links: nothing happens until the POST.
    assert await SuppressionList(redis, KEYS).get("reader@example.com") is None
    assert await redis.xlen(P0.events) == 0


async def test_one_click_post_suppresses_at_once(tracker: TestClient[Any, Any], redis: Any) -> None:
    text = token("u", 4, e="Reader@Example.com", l="newsletter")
    for _ in range(2):
        resp = await tracker.post(
            "/v1/events/unsubscribe",
            params={"t": text},
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200
        assert (await resp.json())["status"] == "unsubscribed"
    suppressions = SuppressionList(redis, KEYS)
    assert await suppressions.get("reader@example.com") is None  # only that list: not global
    lists = await suppressions.lists_of("reader@example.com")
    assert list(lists) == ["newsletter"] and lists["newsletter"].topic == TOPIC
    [event] = await stream_events(redis, P0.events)  # a second POST records nothing more
    assert event.detail == "list newsletter"
    assert (event.type, event.index, event.email, event.unique) == (
        "unsubscribed",
        4,
        "Reader@Example.com",
        True,
    )


async def test_browser_post_gets_a_page(tracker: TestClient[Any, Any]) -> None:
    resp = await tracker.post(
        "/v1/events/unsubscribe",
        params={"t": token("u", 1, e="a@example.com")},
        data={"List-Unsubscribe": "One-Click"},
        headers={"Accept": "text/html,application/xhtml+xml"},
    )
    assert resp.status == 200
    assert "unsubscribed" in await resp.text()


async def test_invalid_unsubscribe_token_is_400(tracker: TestClient[Any, Any], redis: Any) -> None:
    forged = tampered(token("u", 1, e="a@example.com"), e="victim@example.com")
    page = await tracker.get("/v1/events/unsubscribe", params={"t": forged})
    assert page.status == 400
    assert "not valid" in await page.text()
    post = await tracker.post("/v1/events/unsubscribe", params={"t": forged})
    assert post.status == 400
    assert (await post.json())["error"] == "invalid_token"
    assert await SuppressionList(redis, KEYS).count() == 0


async def test_generated_secret_is_shared_through_redis(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    async with start_tracker(make_settings(TRACKING_SECRET="")) as client:
        secret = (await redis.get(KEYS.secret)).encode()
        await get_open(client, {"t": token("o", 0, secret=secret)})
        await get_open(client, {"t": token("o", 1)})  # signed with another secret
    [event] = await stream_events(redis, P0.events)
    assert event.index == 0


async def test_redis_down_keeps_pixels_and_redirects_working(
    make_settings: Callable[..., Settings], start_tracker: Callable[[Settings], Any]
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    failures = "sesflow_tracker_record_failures_total"
    async with start_tracker(make_settings(REDIS_URL=down)) as client:
        before = await metric(client, failures, kind="open")
        await get_open(client, {"t": token("o", 0)})
        url = "https://example.com/x"
        resp = await client.get(
            "/v1/events/click", params={"t": token("c", 0, u=url)}, allow_redirects=False
        )
        assert (resp.status, resp.headers["Location"]) == (302, url)
        resp = await client.post(
            "/v1/events/unsubscribe", params={"t": token("u", 0, e="a@example.com")}
        )
        assert resp.status == 503  # never pretend an unsubscribe worked
        assert await metric(client, failures, kind="open") - before == 1
    # Without TRACKING_SECRET the secret lives in Redis: pixels still answer.
    async with start_tracker(make_settings(REDIS_URL=down, TRACKING_SECRET="")) as client:
        await get_open(client, {"t": token("o", 0)})
        resp = await client.get("/v1/events/click", params={"t": token("c", 0, u=url)})
        assert resp.status == 503


async def test_go_service_pixels_with_a_trailing_slash_still_work(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    """The Go service's mail, already in inboxes, embeds `/v1/events/open/?requestId=N`."""
    async with start_tracker(make_settings(ALLOW_UNSIGNED_OPENS="1")) as client:
        resp = await client.get("/v1/events/open/", params={"requestId": "42"})
        assert resp.status == 200 and await resp.read() == PIXEL
    (legacy,) = await stream_events(redis, P0.events)
    assert legacy.type == "opened" and "42" in legacy.detail


async def test_an_unsubscribe_link_of_older_mail_leaves_every_list(
    tracker: TestClient[Any, Any], redis: Any
) -> None:
    """A token signed before lists existed names no list: it leaves every list (bulk mail of
    any list skips the address, transactional mail does not), never the global list."""
    resp = await tracker.post(
        "/v1/events/unsubscribe", params={"t": token("u", 2, e="old@example.com")}
    )
    assert resp.status == 200
    suppressions = SuppressionList(redis, KEYS)
    assert await suppressions.get("old@example.com") is None
    assert list(await suppressions.lists_of("old@example.com")) == ["*"]
    assert await suppressions.suppressed_for(["old@example.com"], "any-list") == {"old@example.com"}
    assert await suppressions.suppressed_for(["old@example.com"], "") == set()

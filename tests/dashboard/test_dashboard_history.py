"""The dashboard's topic history in headless Chromium: a topic row opens the topic's messages
from the archive and, for a message, its recipients with their state and last event, the same
as the look-up API answers. The archive is filled directly; stats runs as a real process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dashboard.test_dashboard_browser import require_chromium

from sesflow.common.keys import Keys
from sesflow.common.schema import Event
from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.db import connect_archive

from support.archivefill import add_rows
from support.chromium_cdp import Chromium
from support.procs import Cluster
from support.statskit import add_events

pytestmark = pytest.mark.slow

TOPIC = "spring-sale"
NEWER, OLDER = "1750000060000-0", "1750000000000-0"
STATES = ["delivered", "opened", "bounced", "delivered", "clicked", "complained", "sent", "queued"]
PAGE = 50

READ_HISTORY = """(() => ({
  state: document.querySelector('[data-testid=history]').dataset.state,
  hidden: document.querySelector('[data-testid=history]').hidden,
  topic: document.querySelector('[data-testid=history-topic]').textContent,
  error: document.querySelector('[data-testid=history-error]').textContent,
  messages: [...document.querySelectorAll('[data-testid=message-row]')].map((tr) => ({
    id: tr.dataset.message, total: Number(tr.dataset.total),
    picked: tr.classList.contains('picked')})),
  message: document.querySelector('[data-testid=message-id]').textContent,
  counts: Object.fromEntries(
    [...document.querySelectorAll('[data-testid=message-counts] [data-state]')]
      .map((el) => [el.dataset.state, Number(el.dataset.count)])),
  recipients: [...document.querySelectorAll('[data-testid=recipient-row]')].map((tr) => ({
    email: tr.dataset.email, state: tr.dataset.state, last_event: tr.dataset.lastEvent})),
  more: !document.querySelector('[data-testid=recipients-more]').hidden,
  detail: !document.querySelector('[data-testid=message-detail]').hidden,
}))()"""


async def fill(url: str, now_ms: int) -> None:
    db = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))
    big = PAGE + 12  # the newer message has more recipients than one page
    try:
        await add_rows(
            db,
            "messages",
            [
                (
                    OLDER,
                    TOPIC,
                    "Spring sale: the offers",
                    "bulk",
                    len(STATES),
                    now_ms - 60_000,
                    None,
                ),
                (NEWER, TOPIC, "Spring sale: last day", "bulk", big, now_ms - 1000, None),
            ],
        )
        rows = []
        for i, state in enumerate(STATES):
            sent = now_ms - 59_000 if state != "queued" else None
            ses = f"0100019a{i:04d}-5c3e-4f0a-9d1e-ses" if sent else ""
            at = now_ms - 50_000 + i * 1000
            rows.append(
                (OLDER, i, f"reader{i:02d}@example.com", state, 3, ses, state, at, sent, at)
            )
        for i in range(big):
            at = now_ms - 900
            rows.append(
                (NEWER, i, f"fan{i:03d}@example.com", "sent", 3, f"b{i}", "sent", at, at, at)
            )
        await add_rows(db, "recipients", rows)
        await add_rows(db, "topics", [(TOPIC, now_ms - 60_000, now_ms - 1000, 2)])
    finally:
        await db.close()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_topic_row_opens_its_messages_and_their_recipients(
    redis_url: str, redis: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    chromium = require_chromium()
    archive = f"sqlite:///{tmp_path}/archive.db"
    now_ms = int(time.time() * 1000)
    await fill(archive, now_ms)
    # The counters know the topic too, so the dashboard lists it.
    accepted = Event(type="accepted", ts=now_ms, topic=TOPIC, msg_id=NEWER, n=len(STATES))
    await add_events(redis, Keys(), accepted)
    cluster = Cluster(redis_url, tmp_path / "logs", ARCHIVE_URL=archive)
    await asyncio.to_thread(cluster.start, "stats")
    try:
        await asyncio.to_thread(cluster.wait_listening, ["stats"])
        stats = cluster.url("stats")
        async with Chromium.launch(chromium) as browser, aiohttp.ClientSession() as http:
            try:
                await check_history(browser, http, stats)
            finally:
                await browser.evaluate("window.scrollTo(0, 0)")
                await browser.screenshot(artifacts_dir / "dashboard-history.png")
    finally:
        await asyncio.to_thread(cluster.stop_all)


async def check_history(browser: Chromium, http: aiohttp.ClientSession, stats: str) -> None:
    await browser.navigate(f"{stats}/?refresh=0.5")
    await browser.wait_for(
        f"document.querySelector('[data-testid=topic-row][data-topic=\"{TOPIC}\"] a') !== null",
        within=20,
    )
    assert (await browser.evaluate(READ_HISTORY))["hidden"]
    # The topic's name opens its history: the messages, newest first, and the newest's recipients.
    await browser.evaluate(
        f"document.querySelector('[data-testid=topic-row][data-topic=\"{TOPIC}\"] a').click()"
    )
    await browser.wait_for(
        "document.querySelector('[data-testid=history]').dataset.state === 'ready' && "
        "document.querySelectorAll('[data-testid=recipient-row]').length > 0"
    )
    page = await browser.evaluate(READ_HISTORY)
    assert page["error"] == "" and page["topic"] == TOPIC
    api = await get_json(http, f"{stats}/v1/topics/{TOPIC}/messages")
    assert [m["id"] for m in page["messages"]] == [m["id"] for m in api["items"]] == [NEWER, OLDER]
    assert [m["picked"] for m in page["messages"]] == [True, False]
    assert page["message"] == NEWER
    assert len(page["recipients"]) == PAGE and page["more"]  # one page, and a button for more
    await browser.evaluate("document.querySelector('[data-testid=recipients-more]').click()")
    await browser.wait_for(
        f"document.querySelectorAll('[data-testid=recipient-row]').length === {PAGE + 12}"
    )
    assert not (await browser.evaluate(READ_HISTORY))["more"]

    # Another message: its counts and every recipient's state and last event, as the API has them.
    await browser.evaluate(
        f"document.querySelector('[data-testid=message-row][data-message=\"{OLDER}\"]').click()"
    )
    await browser.wait_for(
        f"document.querySelector('[data-testid=message-id]').textContent === '{OLDER}' && "
        f"document.querySelectorAll('[data-testid=recipient-row]').length === {len(STATES)}"
    )
    page = await browser.evaluate(READ_HISTORY)
    message = await get_json(http, f"{stats}/v1/messages/{OLDER}")
    recipients = await get_json(http, f"{stats}/v1/messages/{OLDER}/recipients")
    assert page["counts"] == message["counts"]
    assert page["recipients"] == [
        {"email": r["email"], "state": r["state"], "last_event": r["last_event"] or ""}
        for r in recipients["items"]
    ]
    assert [r["state"] for r in page["recipients"]] == STATES
    assert [m["picked"] for m in page["messages"]] == [False, True]
    assert await browser.evaluate("location.hash") == f"#topic={TOPIC}&message={OLDER}"

    # An unknown topic (a shared link gone stale) says so on the page.
    await browser.evaluate("location.hash = '#topic=gone'")
    await browser.wait_for(
        "document.querySelector('[data-testid=history]').dataset.state === 'error'"
    )
    error = (await browser.evaluate(READ_HISTORY))["error"]
    assert "no topic 'gone' in the archive" in error and "404" in error
    await browser.evaluate(f"location.hash = '#topic={TOPIC}&message={OLDER}'")
    await browser.wait_for(
        "document.querySelector('[data-testid=history]').dataset.state === 'ready' && "
        f"document.querySelectorAll('[data-testid=recipient-row]').length === {len(STATES)}"
    )
    assert (await browser.evaluate(READ_HISTORY))["detail"]
    # Close hides it.
    await browser.evaluate("document.querySelector('[data-testid=history-close]').click()")
    assert (await browser.evaluate(READ_HISTORY))["hidden"]
    await browser.evaluate(f"location.hash = '#topic={TOPIC}&message={OLDER}'")
    await browser.wait_for(
        "document.querySelector('[data-testid=history]').dataset.state === 'ready' && "
        f"document.querySelectorAll('[data-testid=recipient-row]').length === {len(STATES)}"
    )
    assert (await browser.evaluate(READ_HISTORY))["detail"]

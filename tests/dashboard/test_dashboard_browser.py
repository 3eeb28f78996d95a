"""The live dashboard in headless Chromium, against every role as a real process.

A campaign runs through the pipeline (ingest -> sender -> the SES stub; signed SNS feedback, opens
and clicks through the tracker; stats counts it all). One topic finishes, with a rejected address;
a second one stops half-way on SES's daily quota, so it stays unfinished and, once its sends are
out of the rate window, has no rate and no ETA ("waiting"). The page must show live numbers and
charts that match the API, the SES quota as SES reports it after the campaign, keep refreshing by
itself, and leave a screenshot in the test artifacts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sesflow.cli.embedded import free_port
from sesflow.cli.local_ses import LOCAL_CREDENTIALS

from support.chromium_cdp import Chromium, find_chromium
from support.procs import Cluster
from support.sesstub import SesStub
from support.snssign import SnsSigner
from support.until import until

pytestmark = pytest.mark.slow

FINISHED, UNFINISHED = "spring-sale", "weekly-digest"
FINISHED_EMAILS = [f"reader{n:02d}@example.com" for n in range(19)] + ["refused@example.com"]
UNFINISHED_EMAILS = [f"digest{n:02d}@example.com" for n in range(30)]
UNFINISHED_SENT = 12  # SES's daily quota runs out after these
HTML = '<p>Spring sale: <a href="https://shop.example.com/sale">see the offers</a></p>'

# Every value the page shows, by data-testid (cards) and data-field (topic rows).
READ_PAGE = """(() => {
  const cards = {};
  for (const el of document.querySelectorAll("[data-testid][data-value]")) {
    cards[el.dataset.testid] = {value: el.dataset.value, text: el.textContent.trim()};
  }
  const topics = {};
  for (const tr of document.querySelectorAll("[data-testid=topic-row]")) {
    const row = {};
    for (const td of tr.querySelectorAll("td[data-field]")) {
      row[td.dataset.field] = {value: td.dataset.value, text: td.textContent.trim()};
    }
    topics[tr.dataset.topic] = row;
  }
  const charts = {};
  for (const svg of document.querySelectorAll("svg[data-testid]")) {
    const totals = {};
    for (const path of svg.querySelectorAll("path[data-series]")) {
      totals[path.dataset.series] = Number(svg.getAttribute("data-total-" + path.dataset.series));
    }
    charts[svg.dataset.testid] = {points: Number(svg.dataset.points), rate: svg.dataset.rate,
                                  start: Number(svg.dataset.start), totals};
  }
  const lanes = [...document.querySelectorAll("[data-testid=lanes] [data-lane]")].map(
    (el) => ({lane: el.dataset.lane, queued: Number(el.dataset.queued)}));
  const parts = {};
  for (const el of document.querySelectorAll("[data-testid=lanes] [data-part]")) {
    parts[el.dataset.part] = Number(el.dataset.queued ?? el.dataset.scheduled);
  }
  const legend = [...document.querySelectorAll("[data-testid=bar-legend] li")].map(
    (li) => li.textContent.trim());
  return {state: document.querySelector("[data-testid=status]").dataset.state, cards, topics,
          charts, lanes, parts, legend};
})()"""


def require_chromium() -> str:
    """In CI a missing browser fails the test; elsewhere it skips it."""
    path = find_chromium()
    if path is None:
        reason = "headless Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs it, the dashboard test needs it")
        pytest.skip(reason)
    return path


def ses_notification(kind: str, ses_id: str, email: str) -> dict[str, Any]:
    """An SES identity notification (the `Message` SNS carries) about one recipient."""
    # Now: the feedback chart shows the last hours, by the time SES reports.
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    mail = {"timestamp": at, "messageId": ses_id, "destination": [email]}
    details: dict[str, Any] = {
        "Delivery": {"delivery": {"timestamp": at, "recipients": [email]}},
        "Bounce": {
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "timestamp": at,
                "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "550 5.1.1"}],
            }
        },
        "Complaint": {
            "complaint": {
                "timestamp": at,
                "complainedRecipients": [{"emailAddress": email}],
                "complaintFeedbackType": "abuse",
            }
        },
    }
    return {
        "notificationType": kind,
        "mail": {**mail, "source": "news@example.com"},
        **details[kind],
    }


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def topic_so_far(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """A topic's statistics; zeros while stats has not counted any of its events yet."""
    async with http.get(url) as resp:
        if resp.status == 404:
            return {"sent": 0, "failed": 0}
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def enqueue(http: aiohttp.ClientSession, ingest: str, topic: str, emails: list[str]) -> str:
    message = {
        "topic_id": topic,
        "emails": emails,
        "subject": f"{topic} news",
        "content": HTML,
        "track_clicks": True,
    }
    async with http.post(f"{ingest}/v1/messages", json={"messages": [message]}) as resp:
        assert resp.status == 202, await resp.text()
        msg_id: str = (await resp.json())["messages"][0]["id"]
        return msg_id


def ses_ids(stub: SesStub, emails: list[str]) -> list[str]:
    """SES message ids of the sent recipients, in recipient order (as SES answered them)."""
    return [stub.mail[email][-1].message_id for email in emails if stub.mail.get(email)]


def tracking_links(stub: SesStub) -> dict[str, tuple[str, str]]:
    """recipient -> (open pixel URL, click URL), read from the HTML SES received."""
    links = {}
    for to, mails in stub.mail.items():
        html = mails[-1].html
        pixel = re.search(r'src="([^"]*/v1/events/open\?t=[^"]+)"', html)
        click = re.search(r'href="([^"]*/v1/events/click\?[^"]+)"', html)
        assert pixel and click, html
        links[to] = (unescape(pixel[1]), unescape(click[1]))
    return links


async def give_feedback(
    http: aiohttp.ClientSession, tracker: str, signer: SnsSigner, sent: list[tuple[str, str]]
) -> None:
    """12 deliveries, a hard bounce and a complaint, as signed SNS notifications."""
    kinds = ["Delivery"] * 12 + ["Bounce", "Complaint"]
    for kind, (ses_id, email) in zip(kinds, sent, strict=False):
        body = signer.notification(ses_notification(kind, ses_id, email))
        async with http.post(f"{tracker}/v1/events/results", data=json.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()


async def visit(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status in (200, 302), await resp.text()


def within(page: float, before: float, after: float, slack: float = 0.1) -> bool:
    """A value that drifts with time (rates, ETAs): the page's reading was taken between two API
    readings, so it lies between them, give or take the drift of the rate window."""
    low, high = min(before, after), max(before, after)
    return low * (1 - slack) - 1e-6 <= page <= high * (1 + slack) + 1e-6


async def test_dashboard_shows_live_numbers_that_match_the_api(
    redis_url: str, redis: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    chromium = require_chromium()
    signer = SnsSigner()
    async with SesStub(reject_pattern="^refused@") as stub, signer.serve():
        cluster = Cluster(
            redis_url,
            tmp_path / "logs",
            SES_ENDPOINT_URL=stub.url,
            AWS_REGION="us-east-1",
            EMAIL_SENDER="news@example.com",
            EMAIL_RATE="100",
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
            **LOCAL_CREDENTIALS,
        )
        starting = asyncio.create_task(asyncio.to_thread(cluster.start_all, 1))
        try:
            async with Chromium.launch(chromium) as browser, aiohttp.ClientSession() as http:
                await starting
                try:
                    await run_campaign_and_check_page(
                        Deployment(cluster, stub, signer, redis), browser, http, artifacts_dir
                    )
                finally:  # also when a check fails: the picture shows what the page showed
                    await browser.screenshot(artifacts_dir / "dashboard.png")
        finally:
            await asyncio.to_thread(cluster.stop_all)


@dataclass(frozen=True)
class Deployment:
    """What the page is looking at: the roles, the SES stub, the SNS signer and Redis."""

    cluster: Cluster
    stub: SesStub
    signer: SnsSigner
    redis: Any


async def run_campaign_and_check_page(
    deployment: Deployment,
    browser: Chromium,
    http: aiohttp.ClientSession,
    artifacts_dir: Path,
) -> None:
    cluster, stub, signer = deployment.cluster, deployment.stub, deployment.signer
    ingest, tracker, stats = (cluster.url(role) for role in ("ingest", "tracker", "stats"))

    # 1. A topic that finishes: 19 sent, 1 refused by SES.
    msg_id = await enqueue(http, ingest, FINISHED, FINISHED_EMAILS)
    done = await until(
        lambda: topic_so_far(http, f"{stats}/v1/topics/{FINISHED}"),
        lambda t: t["sent"] + t["failed"] == len(FINISHED_EMAILS),
        within=20,
    )
    assert (done["sent"], done["failed"]) == (19, 1), done

    # 2. Its feedback: SNS notifications, opens (one recipient twice) and clicks.
    ids = ses_ids(stub, FINISHED_EMAILS)
    await give_feedback(http, tracker, signer, list(zip(ids, FINISHED_EMAILS, strict=False)))
    links = tracking_links(stub)
    for email in [*FINISHED_EMAILS[:6], FINISHED_EMAILS[0]]:
        await visit(http, links[email][0])
    for email in FINISHED_EMAILS[:3]:
        await visit(http, links[email][1])

    # 3. A topic that stays unfinished: SES's daily quota runs out after 12 of its 30.
    stub.configure(max_24h=stub.sent + UNFINISHED_SENT)
    await enqueue(http, ingest, UNFINISHED, UNFINISHED_EMAILS)

    async def quota_refusals() -> int:
        return stub.quota_answers

    await until(quota_refusals, what="SES to refuse a send over the daily quota", within=20)
    overview = await until(
        lambda: get_json(http, f"{stats}/v1/stats/overview"),
        lambda o: (
            o["totals"]["sent"] == 19 + UNFINISHED_SENT
            and (o["totals"]["delivered"], o["totals"]["bounced"], o["totals"]["complained"])
            == (12, 1, 1)
            and (o["totals"]["opened"], o["totals"]["clicked"]) == (7, 3)
        ),
        within=20,
    )
    assert overview["totals"]["sent"] == 19 + UNFINISHED_SENT, overview["totals"]
    # Every send settled into the per-second chart (the last seconds may still be filling)...
    charts = await until(
        lambda: get_json(http, f"{stats}/v1/stats/charts"),
        lambda c: sum(c["sent_per_second"]["values"]) == 19 + UNFINISHED_SENT,
        what="every send in the per-second chart",
        within=20,
    )
    assert sum(charts["sent_per_second"]["values"]) == 19 + UNFINISHED_SENT, charts
    # ...and, stalled on the quota, once its sends leave the rate window it has no rate, no ETA.
    stalled = await until(
        lambda: get_json(http, f"{stats}/v1/stats/overview"),
        lambda o: o["send_rate"] == 0,
        what="the send rate to fall to 0",
        within=overview["rate_window_s"] + 15,
    )
    assert stalled["send_rate"] == 0, stalled

    # 4. The page: wait for live numbers, read them between two API readings.
    await browser.navigate(f"{stats}/?refresh=0.3")
    await browser.wait_for(
        "document.querySelector('[data-testid=status]').dataset.state === 'live' && "
        f"document.querySelector('[data-testid=total-sent]').dataset.value === '{19 + 12}' && "
        "document.querySelectorAll('[data-testid=topic-row]').length === 2"
    )
    before = await get_json(http, f"{stats}/v1/stats/overview")
    # The page's next refresh comes after `before`.
    await browser.wait_for(
        f"Number(document.querySelector('[data-testid=updated]').dataset.value) > "
        f"{before['generated_at']}"
    )
    page = await browser.evaluate(READ_PAGE)
    after = await get_json(http, f"{stats}/v1/stats/overview")
    charts = await get_json(http, f"{stats}/v1/stats/charts")
    topics = {t: await get_json(http, f"{stats}/v1/topics/{t}") for t in (FINISHED, UNFINISHED)}
    assert page["state"] == "live"
    check_cards(page["cards"], before, after)
    check_topics(page["topics"], topics, before, after)
    check_charts(page, charts, after)
    # The ETA's wording, for a topic that has one (none has here).
    assert await browser.evaluate("[eta(42), eta(75), eta(3 * 3600 + 125)]") == [
        "42s",
        "1m 15s",
        "3h 2m",
    ]

    # The SES quota card follows SES: re-read while the page is open, it shows what went out.
    await browser.wait_for(
        f"document.querySelector('[data-testid=quota-sent]').dataset.value === '{stub.sent}'",
        within=30,
    )

    # 5. It refreshes by itself: a new open shows up without reloading the page.
    await visit(http, links[FINISHED_EMAILS[10]][0])
    await browser.wait_for(
        "document.querySelector('[data-testid=opens-unique]').dataset.value === '7'", within=8
    )

    # 6. The topic's name opens its history from the archive: the message and its recipients,
    # with the states and last events the look-ups give.
    await check_history(browser, http, stats, msg_id, artifacts_dir)

    # 7. The pause buttons call ingest and the page shows what they did.
    await check_pause_buttons(browser, http, ingest, stats, artifacts_dir)


async def check_history(
    browser: Chromium, http: aiohttp.ClientSession, stats: str, msg_id: str, artifacts_dir: Path
) -> None:
    recipients_url = f"{stats}/v1/messages/{msg_id}/recipients"
    # The archive writer has caught up with the feedback: 12 delivered (some opened or clicked
    # since), a bounce, a complaint, and the address SES refused.
    api = await until(
        lambda: get_json(http, recipients_url),
        lambda page: (
            sum(r["state"] in ("bounced", "complained") for r in page["items"]) == 2
            and sum(r["state"] == "clicked" for r in page["items"]) == 3
        ),
        what="the feedback archived",
        within=20,
    )
    await browser.evaluate(
        f"document.querySelector('[data-testid=topic-row][data-topic=\"{FINISHED}\"] a').click()"
    )
    await browser.wait_for(
        "document.querySelector('[data-testid=history]').dataset.state === 'ready' && "
        "document.querySelectorAll('[data-testid=recipient-row]').length === "
        f"{len(FINISHED_EMAILS)}"
    )
    page = await browser.evaluate(
        """[...document.querySelectorAll('[data-testid=recipient-row]')].map((tr) => [
             tr.dataset.email, tr.dataset.state, tr.dataset.lastEvent])"""
    )
    assert page == [[r["email"], r["state"], r["last_event"] or ""] for r in api["items"]]
    rows = await browser.evaluate(
        "[...document.querySelectorAll('[data-testid=message-row]')]"
        ".map((tr) => tr.dataset.message)"
    )
    assert rows == [msg_id]
    await browser.screenshot(artifacts_dir / "dashboard-topic-history.png")
    await browser.evaluate("document.querySelector('[data-testid=history-close]').click()")


def row_state(topic: str) -> str:
    """JS: the topic row's pause state as the page shows it (badge and button)."""
    return f"""(() => {{
  const tr = document.querySelector('[data-testid=topic-row][data-topic="{topic}"]');
  if (!tr) return null;
  const badge = tr.querySelector('[data-badge=paused]');
  const button = tr.querySelector('button[data-action]');
  return (badge ? 'paused' : 'sending') + ':' + button.dataset.action;
}})()"""


async def check_pause_buttons(
    browser: Chromium, http: aiohttp.ClientSession, ingest: str, stats: str, artifacts_dir: Path
) -> None:
    async def paused(topic: str) -> bool:
        body = await get_json(http, f"{stats}/v1/topics/{topic}")
        return bool(body["paused"])

    async def bulk_paused() -> bool:
        return bool((await get_json(http, f"{stats}/v1/stats/overview"))["bulk_pause"]["paused"])

    # A topic's Pause button pauses it (cross-origin, to ingest); the row and the alert say so.
    assert await browser.evaluate(row_state(UNFINISHED)) == "sending:pause"
    await browser.evaluate(
        f'document.querySelector(\'[data-testid=topic-row][data-topic="{UNFINISHED}"] '
        "button[data-action=pause]').click()"
    )
    await until(lambda: paused(UNFINISHED), what="the topic paused through the page")
    assert await browser.wait_for(f"{row_state(UNFINISHED)} === 'paused:resume'")
    await browser.wait_for(
        "[...document.querySelectorAll('[data-testid=pause]')].some("
        f"(li) => li.dataset.topic === '{UNFINISHED}' && li.dataset.reason === 'manual')"
    )
    assert not await paused(FINISHED)  # the other topic is left alone
    await browser.screenshot(artifacts_dir / "dashboard-paused.png")
    # ...and its Resume button resumes it.
    await browser.evaluate(
        f'document.querySelector(\'[data-testid=topic-row][data-topic="{UNFINISHED}"] '
        "button[data-action=resume]').click()"
    )
    await until(lambda: paused(UNFINISHED), lambda p: not p, what="the topic resumed")
    await browser.wait_for(f"{row_state(UNFINISHED)} === 'sending:pause'")

    # The global button pauses all bulk sending, then resumes it.
    toggle = "document.querySelector('[data-testid=bulk-toggle]')"
    assert await browser.evaluate(f"{toggle}.dataset.action") == "pause"
    await browser.evaluate(f"{toggle}.click()")
    await until(bulk_paused, what="all bulk paused through the page")
    await browser.wait_for(f"{toggle}.dataset.action === 'resume'")
    await browser.wait_for(
        "[...document.querySelectorAll('[data-testid=pause]')]"
        ".some((li) => li.dataset.topic === '')"
    )
    await browser.evaluate(f"{toggle}.click()")
    await until(bulk_paused, lambda p: not p, what="all bulk resumed through the page")
    await browser.wait_for(f"{toggle}.dataset.action === 'pause'")
    await browser.wait_for("document.querySelector('[data-testid=pause-alert]').hidden")

    # Errors are shown: ingest refusing the call (its JSON detail), and ingest unreachable.
    error = "document.querySelector('[data-testid=action-error]')"
    long_topic = "x" * 201
    await browser.evaluate(
        f"pauseAction('{long_topic}', 'pause', document.createElement('button'))"
    )
    text = await browser.evaluate(f"{error}.hidden ? null : {error}.textContent")
    assert text is not None and "failed" in text and "longer than 200" in text, text
    assert "(HTTP 400)" in text, text
    closed = free_port()  # nothing listens there
    await browser.evaluate(
        f"(ingestUrl = 'http://127.0.0.1:{closed}', "
        f"pauseAction(null, 'pause', document.createElement('button')))"
    )
    text = await browser.evaluate(f"{error}.hidden ? null : {error}.textContent")
    assert text is not None and "unreachable" in text and str(closed) in text, text
    assert not await bulk_paused()
    # The overview tells the page where ingest is: this host at INGEST_PORT.
    overview = await get_json(http, f"{stats}/v1/stats/overview")
    assert overview["ingest_url"] == ingest.rstrip("/")


def check_cards(cards: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    def number(testid: str) -> float:
        return float(cards[testid]["value"])

    totals, rates = after["totals"], after["rates"]
    assert before["totals"] == totals  # nothing moves any more but the time
    exact = {
        "total-sent": totals["sent"],
        "total-accepted": totals["total"],
        "total-failed": totals["failed"],
        "opens": totals["opened"],
        "opens-unique": totals["opened_unique"],
        "clicks": totals["clicked"],
        "clicks-unique": totals["clicked_unique"],
        "queue-depth": after["queue"]["queued"],
        "configured-rate": after["configured_rate"],
        "delivery-rate": rates["delivery"],
        "bounce-rate": rates["bounce"],
        "complaint-rate": rates["complaint"],
    }
    for testid, expected in exact.items():
        assert number(testid) == pytest.approx(expected), (testid, cards[testid], expected)
    assert (totals["sent"], totals["failed"], totals["total"]) == (31, 1, 50)
    assert after["queue"]["queued"] == len(UNFINISHED_EMAILS) - UNFINISHED_SENT
    assert cards["delivery-rate"]["text"] == f"{12 / 31 * 100:.2f}%"
    assert cards["total-sent"]["text"] == "31"
    # Nothing was sent in the rate window: the page says 0/s, as the API does.
    assert number("send-rate") == before["send_rate"] == after["send_rate"] == 0
    assert cards["send-rate"]["text"] == "0.0"
    assert number("configured-rate") == 100


def check_topics(
    rows: dict[str, Any], topics: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert set(rows) == {FINISHED, UNFINISHED}
    drifting = {
        name: ({t["topic_id"]: t for t in before["topics"]}[name], row)
        for name, row in ((t["topic_id"], t) for t in after["topics"])
    }
    for name, api in topics.items():
        row = rows[name]
        for field in ("sent", "total", "failed", "delivered", "bounced", "complained"):
            assert int(row[field]["value"]) == api[field], (name, field, row[field], api[field])
        assert int(row["opened"]["value"]) == api["opened"]
        assert int(row["clicked"]["value"]) == api["clicked"]
        finished = api["total"] - api["created"]
        assert float(row["progress"]["value"]) == pytest.approx(finished / api["total"])
        assert f"{api['sent']} / {api['total']}" in row["progress"]["text"]
        then, now = drifting[name]
        rate = float(row["send_rate"]["value"])
        assert within(rate, then["send_rate"], now["send_rate"]), (name, rate, then, now)
    assert rows[FINISHED]["eta"]["text"] == "done"
    then, now = drifting[UNFINISHED]
    assert then["eta_seconds"] is None and now["eta_seconds"] is None  # stalled: no ETA
    assert rows[UNFINISHED]["eta"] == {"value": "", "text": "waiting"}


def check_charts(page: dict[str, Any], charts: dict[str, Any], after: dict[str, Any]) -> None:
    """Both charts are drawn with every point, and their totals are the API's."""
    sends, feedback = page["charts"]["chart-sends"], page["charts"]["chart-feedback"]
    assert sends["points"] == len(charts["sent_per_second"]["values"]) == 15 * 60
    assert sends["totals"] == {"sent": sum(charts["sent_per_second"]["values"])}
    assert sends["totals"]["sent"] == after["totals"]["sent"]  # every send of the campaign
    assert sends["rate"] == "100"
    series = charts["feedback_per_minute"]["series"]
    assert feedback["points"] == 3 * 60
    assert feedback["totals"] == {name: sum(values) for name, values in series.items()}
    assert feedback["totals"] == {
        "delivered": 12,
        "bounced": 1,
        "complained": 1,
        "opened": 7,
        "clicked": 3,
    }
    queue = after["queue"]
    # A block per lane, as the API counts them, then what is on `sends` and the scheduled chunks.
    assert [lane["lane"] for lane in queue["lanes"]] == ["transactional", "bulk", "paused"]
    assert page["lanes"] == queue["lanes"]
    assert page["parts"] == {
        "sends": queue["lag"] + queue["pending"],
        "scheduled": queue["scheduled"],
    }
    on_sends = queue["lag"] + queue["pending"]
    assert on_sends + sum(lane["queued"] for lane in queue["lanes"]) == queue["queued"]
    assert page["legend"] == ["sent", "failed, stopped or suppressed", "still to send"]

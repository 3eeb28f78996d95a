"""`sesflow messages ID` and `sesflow recipient EMAIL` against a real stats process reading a
filled archive: what a newcomer reads, the JSON, paging past one API page, and the errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.db import connect_archive

from support.archivefill import add_rows, event
from support.clikit import Sesflow
from support.procs import Cluster

T0 = 1_750_000_000_000
API_KEY = "cli-lookup-key-0123456789abcdef"
BIG = 1203  # recipients of the big message: more than two API pages


async def fill(url: str) -> None:
    db = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))
    try:
        await add_rows(
            db,
            "messages",
            [
                ("1750000000000-0", "june-news", "June news", "bulk", 3, T0, T0 + 3_600_000),
                ("1750000000001-0", "june-news", "June, bigger", "bulk", BIG, T0 + 1, None),
            ],
        )
        states = ["delivered", "bounced", "queued"]
        await add_rows(
            db,
            "recipients",
            [
                (
                    "1750000000000-0",
                    i,
                    f"reader{i}@example.com",
                    state,
                    3,
                    f"ses-{i}" if state != "queued" else "",
                    state,
                    T0 + 100 + i,
                    T0 + 50 if state != "queued" else None,
                    T0 + 100 + i,
                )
                for i, state in enumerate(states)
            ]
            + [
                (
                    "1750000000001-0",
                    i,
                    f"big{i}@example.com",
                    "sent",
                    3,
                    f"b{i}",
                    "sent",
                    T0 + 10,
                    T0 + 10,
                    T0 + 10,
                )
                for i in range(BIG)
            ],
        )
        common = {"topic": "june-news", "msg_id": "1750000000000-0", "idx": 1}
        email = "reader1@example.com"
        await add_rows(
            db,
            "events",
            [
                event(0, f"{T0}-0", T0, "accepted", email=email, **common),
                event(0, f"{T0 + 50}-0", T0 + 50, "sent", email=email, ses_id="ses-1", **common),
                event(
                    0,
                    f"{T0 + 101}-0",
                    T0 + 101,
                    "bounced",
                    email=email,
                    bounce_type="Permanent",
                    bounce_subtype="General",
                    detail="smtp; 550 5.1.1 user unknown",
                    **common,
                ),
            ],
        )
        await add_rows(db, "topics", [("june-news", T0, T0 + 1, 2)])
    finally:
        await db.close()


@pytest.fixture
def stats_url(cli_env: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    archive = f"sqlite:///{cli_env}/archive.db"
    asyncio.run(fill(archive))
    cluster = Cluster(redis_url, cli_env / "logs", ARCHIVE_URL=archive, API_KEY=API_KEY)
    try:
        cluster.start("stats")
        cluster.wait_listening(["stats"])
        monkeypatch.setenv("API_KEY", API_KEY)
        monkeypatch.setenv("STATS_URL", cluster.url("stats"))
        yield cluster.url("stats")
    finally:
        cluster.stop_all()


def test_messages_prints_the_message_its_counts_and_recipients(
    stats_url: str, sesflow: Sesflow
) -> None:
    res = sesflow("messages", "1750000000000-0")
    assert res.code == 0, res.err
    out = res.out
    assert "message 1750000000000-0" in out
    assert "topic      june-news  ·  lane bulk" in out
    assert "subject    June news" in out
    assert "recipients 3: " in out
    for part in ("delivered 1", "bounced 1", "queued 1"):
        assert part in out
    lines = [line.split() for line in out.splitlines()]
    rows = {cols[1]: cols for cols in lines if len(cols) > 2 and cols[1].startswith("reader")}
    assert rows["reader0@example.com"][:4] == ["0", "reader0@example.com", "delivered", "delivered"]
    assert rows["reader0@example.com"][-1] == "ses-0"
    assert rows["reader2@example.com"][2:4] == ["queued", "queued"]
    assert rows["reader2@example.com"][-1] == "-"  # no SES id yet
    assert "--all" not in out  # everything fitted


def test_messages_pages_past_one_api_page_and_filters(stats_url: str, sesflow: Sesflow) -> None:
    res = sesflow("messages", "1750000000001-0", "--all", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert [r["index"] for r in data["recipients"]] == list(range(BIG))
    assert data["more"] is False and data["counts"] == {"sent": BIG}
    first = sesflow("messages", "1750000000001-0", "--limit", "3")
    assert "showing the first 3: --all for every one" in first.out
    bounced = sesflow("messages", "1750000000000-0", "--state", "bounced", "--json")
    assert [r["email"] for r in json.loads(bounced.out)["recipients"]] == ["reader1@example.com"]


def test_recipient_prints_the_timeline_newest_first(stats_url: str, sesflow: Sesflow) -> None:
    res = sesflow("recipient", "Reader1@Example.com")
    assert res.code == 0, res.err
    events = [line.split()[2] for line in res.out.splitlines() if "june-news" in line]
    assert events == ["bounced", "sent", "accepted"]
    assert "Permanent/General: smtp; 550 5.1.1 user unknown" in res.out
    assert "1750000000000-0 #1" in res.out
    data: Any = json.loads(sesflow("recipient", "reader1@example.com", "--json").out)
    assert [e["type"] for e in data["events"]] == ["bounced", "sent", "accepted"]
    since = json.loads(
        sesflow(
            "recipient", "reader1@example.com", "--since", "2025-06-15T15:06:40.060Z", "--json"
        ).out
    )
    assert [e["type"] for e in since["events"]] == ["bounced"]


def test_unknown_ids_and_bad_input_say_so(stats_url: str, sesflow: Sesflow) -> None:
    res = sesflow("messages", "no-such-id")
    assert res.code == 1
    assert "not_found: no message 'no-such-id' in the archive" in res.err
    res = sesflow("recipient", "nobody@example.com")
    assert res.code == 1 and "no events for nobody@example.com" in res.err
    res = sesflow("messages", "1750000000000-0", "--state", "lost")
    assert res.code == 1 and "state must be one of" in res.err
    res = sesflow("recipient", "reader1@example.com", "--since", "last tuesday")
    assert res.code == 1 and "since must be" in res.err


def test_an_unreachable_stats_api_is_exit_3(cli_env: Path, sesflow: Sesflow) -> None:
    from sesflow.cli.embedded import free_port

    res = sesflow("messages", "x", "--stats-url", f"http://127.0.0.1:{free_port()}")
    assert res.code == 3
    assert "cannot reach the stats API" in res.err and "--stats-url" in res.err

"""`sesflow archive prune --before DATE`, on SQLite and on Postgres: what goes, what stays, in
bounded batches, and the errors an operator may meet."""

from __future__ import annotations

import asyncio
import json

import pytest

from sesflow.cli.archive import cutoff_ms
from sesflow.common.errors import InputError
from sesflow.common.schema import Event, EventType, encode
from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.batch import ArchiveBatch
from sesflow.stats.archive.db import Database, connect_archive
from sesflow.stats.archive.store import write_batch

from support.clikit import Sesflow
from support.postgres import archive_url, postgres_server

__all__ = ["archive_url", "postgres_server"]

DAY = 86_400_000
OLD = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NEW = OLD + 40 * DAY


def lifecycle(msg_id: str, topic: str, ts: int, recipients: int) -> list[Event]:
    events = [Event(type=EventType.ACCEPTED, ts=ts, topic=topic, msg_id=msg_id, n=recipients)]
    for i in range(recipients):
        base = {"topic": topic, "msg_id": msg_id, "index": i, "email": f"{i}@example.com"}
        events.append(Event(type=EventType.SENT, ts=ts + 1, ses_id=f"{msg_id}-{i}", **base))  # type: ignore[arg-type]
        events.append(Event(type=EventType.DELIVERED, ts=ts + 2, **base))  # type: ignore[arg-type]
    return events


async def fill(url: str) -> None:
    db = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))
    try:
        batch = ArchiveBatch(0)
        n = 0
        for msg_id, topic, ts in (
            (f"{OLD}-0", "old", OLD),
            (f"{OLD + 1}-0", "both", OLD + 1),
            (f"{NEW}-0", "both", NEW),
            (f"{NEW + 1}-0", "new", NEW + 1),
        ):
            for event in lifecycle(msg_id, topic, ts, 7):
                n += 1
                batch.add(f"{event.ts}-{n}", {"e": encode(event).decode()})
        async with db.transaction() as tx:
            await write_batch(tx, batch)
    finally:
        await db.close()


async def counts(url: str) -> dict[str, int]:
    db: Database = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))
    try:
        out = {}
        for table in ("events", "recipients", "messages", "topics"):
            row = await db.fetchone(f"SELECT count(*) AS n FROM {table}")
            assert row is not None
            out[table] = int(row["n"])
        topics = await db.fetch("SELECT topic, messages FROM topics ORDER BY topic")
        out |= {f"topic:{r['topic']}": int(r["messages"]) for r in topics}
        return out
    finally:
        await db.close()


def test_prune_removes_only_what_is_older(
    sesflow: Sesflow, archive_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(fill(archive_url))
    monkeypatch.setenv("ARCHIVE_URL", archive_url)
    before = asyncio.run(counts(archive_url))
    assert before == {
        "events": 60, "recipients": 28, "messages": 4, "topics": 3,
        "topic:both": 2, "topic:new": 1, "topic:old": 1,
    }  # fmt: skip
    # Batches of 4 rows: many rounds, same result.
    res = sesflow("archive", "prune", "--before", "2026-01-20", "--batch", "4", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == {
        "before_ms": OLD + 19 * DAY,
        "events": 30,
        "recipients": 14,
        "messages": 2,
        "topics": 1,
    }
    assert asyncio.run(counts(archive_url)) == {
        "events": 30, "recipients": 14, "messages": 2, "topics": 2, "topic:both": 1, "topic:new": 1,
    }  # fmt: skip
    res = sesflow("archive", "prune", "--before", "2026-01-20")  # again: nothing left to do
    assert res.code == 0 and "removed 0 events, 0 recipients, 0 messages" in res.out


def test_prune_refuses_a_bad_date_and_an_unusable_archive(
    sesflow: Sesflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = sesflow("archive", "prune", "--before", "last tuesday")
    assert res.code == 2 and "not a date" in res.err
    monkeypatch.setenv("ARCHIVE_URL", "mysql://db/archive")
    res = sesflow("archive", "prune", "--before", "2026-01-01")
    assert res.code == 2 and "ARCHIVE_URL" in res.err
    monkeypatch.setenv("ARCHIVE_URL", "postgresql://nobody@127.0.0.1:1/none")
    res = sesflow("archive", "prune", "--before", "2026-01-01")
    assert res.code == 3 and "cannot reach the archive" in res.err
    monkeypatch.setenv("ARCHIVE", "off")
    res = sesflow("archive", "prune", "--before", "2026-01-01")
    assert res.code == 2 and "ARCHIVE=off" in res.err


def test_dates_and_ages() -> None:
    assert cutoff_ms("2026-01-01") == OLD
    assert cutoff_ms("2026-01-01T00:00:00Z") == OLD
    assert cutoff_ms("2026-01-01T01:00:00+01:00") == OLD
    assert cutoff_ms("90d", now=OLD / 1000) == OLD - 90 * DAY
    with pytest.raises(InputError):
        cutoff_ms("soon")

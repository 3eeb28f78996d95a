"""Archive throughput: events/s the archive writer stores into SQLite and into Postgres.

The bench fills one `events` stream with a campaign's events (per message of 1,000 recipients:
accepted, then per recipient sent, SES's send, delivered for most, opens and clicks for some,
bounces for a few), then runs the archive writer as the stats process runs it (`ArchiveWriter`,
its own Redis client, ARCHIVE_BATCH_SIZE) and times it from start until the `archive` group
has stored and acknowledged the last entry. Every event is checked to be in the archive.

SQLite is a file in a temp dir (WAL, synchronous=FULL: the writer's own settings); Postgres is
a throwaway server (`support.postgres`) with its default durability (fsync on).
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sesflow.common.keys import Keys
from sesflow.common.schema import Event, EventType, event_fields
from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.db import connect_archive

from bench.benchkit import redis_client, redis_server
from support.archivekit import event_count, running, unarchived, writer
from support.postgres import PostgresServer
from support.until import until

PER_MESSAGE = 1000
BATCH_SIZE = "5000"


@dataclass(frozen=True)
class Size:
    events: int


def campaign(count: int, seed: int = 7) -> list[Event]:
    """About `count` events of campaigns of PER_MESSAGE recipients each."""
    rng = random.Random(seed)
    events: list[Event] = []
    now = int(time.time() * 1000)
    m = 0
    while len(events) < count:
        msg_id = f"{now + m}-0"
        topic = f"topic-{m % 20}"
        events.append(Event(type=EventType.ACCEPTED, ts=now, topic=topic, msg_id=msg_id,
                            n=PER_MESSAGE))  # fmt: skip
        for i in range(PER_MESSAGE):
            base: dict[str, Any] = {"topic": topic, "msg_id": msg_id, "index": i}
            email, ses_id = f"user{m}.{i}@example.com", f"0100-{m}-{i}"
            events.append(
                Event(type=EventType.SENT, ts=now + 1, email=email, ses_id=ses_id, **base)
            )
            events.append(
                Event(type=EventType.SES_SEND, ts=now + 2, ses_id=ses_id, email=email, **base)
            )
            roll = rng.random()
            if roll < 0.03:
                events.append(Event(type=EventType.BOUNCED, ts=now + 3, email=email, ses_id=ses_id,
                                    bounce_type="Permanent", bounce_subtype="General",
                                    detail="550 5.1.1 user unknown", **base))  # fmt: skip
                continue
            events.append(Event(type=EventType.DELIVERED, ts=now + 3, email=email, ses_id=ses_id,
                                detail="250 2.0.0 OK", **base))  # fmt: skip
            if roll < 0.30:
                events.append(Event(type=EventType.OPENED, ts=now + 4, **base))
            if roll < 0.08:
                events.append(
                    Event(
                        type=EventType.CLICKED, ts=now + 5, url="https://example.com/offer", **base
                    )
                )
        m += 1
    return events[:count]


async def fill(client: Any, events: list[Event]) -> None:
    stream = Keys().partition(0).events
    for start in range(0, len(events), 2000):
        pipe = client.pipeline(transaction=False)
        for event in events[start : start + 2000]:
            pipe.xadd(stream, event_fields(event))
        await pipe.execute()


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and its children, living and ended (Postgres: the postmaster
    and its backends)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid):
            # utime, stime, cutime, cstime: fields 14-17 of stat (here, after the name)
            total += sum(int(v) for v in fields[11:15]) / ticks
        elif fields[1] == str(pid):
            total += sum(int(v) for v in fields[11:13]) / ticks
    return total


@dataclass
class Measured:
    eps: float  # events/s, wall clock
    cpu_us: float  # CPU per event: this process (the writer) plus the database server


async def throughput(archive_url: str, events: list[Event], server_pid: int = 0) -> Measured:
    """Events/s from the writer's start until everything is archived and acknowledged, and the
    CPU it took (the wall figure depends on what else the machine runs; the CPU one less)."""
    with redis_server() as server:
        async with redis_client(server.url) as client:
            await fill(client, events)
            settings = settings_from_mapping(
                {
                    "REDIS_URL": server.url,
                    "ARCHIVE_URL": archive_url,
                    "ARCHIVE_BATCH_SIZE": BATCH_SIZE,
                    "STATS_FLUSH_INTERVAL": "0.05",
                }
            )
            db = await connect_archive(settings)
            try:
                started = time.perf_counter()
                cpu = time.process_time() + (process_tree_cpu_s(server_pid) if server_pid else 0)
                async with running(writer(settings, db)):
                    await until(
                        lambda: unarchived(client, Keys()),
                        lambda behind: not behind,
                        what="the archive writer to drain the stream",
                        within=1200,
                        every=0.02,
                    )
                    elapsed = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                    cpu += process_tree_cpu_s(server_pid) if server_pid else 0
                stored = await event_count(db)
                if stored != len(events):
                    raise RuntimeError(f"archived {stored} of {len(events)} events")
            finally:
                await db.close()
    return Measured(len(events) / elapsed, cpu * 1e6 / len(events))


async def run_once(size: Size) -> dict[str, Any]:
    events = await asyncio.to_thread(campaign, size.events)
    out: dict[str, Any] = {"archive_events": len(events)}
    with tempfile.TemporaryDirectory(prefix="sesflow-bench-archive-") as tmp:
        sqlite = await throughput(f"sqlite:///{tmp}/archive.db", events)
    out["archive_sqlite_eps"] = sqlite.eps
    out["archive_sqlite_cpu_us"] = sqlite.cpu_us
    out["archive_sqlite_eps_per_core"] = 1e6 / sqlite.cpu_us
    server = await asyncio.to_thread(lambda: PostgresServer(durable=True).start())
    try:
        url = await server.new_database()
        assert server.proc is not None
        postgres = await throughput(url, events, server.proc.pid)
    finally:
        await asyncio.to_thread(server.stop)
    out["archive_postgres_eps"] = postgres.eps
    out["archive_postgres_cpu_us"] = postgres.cpu_us
    out["archive_postgres_eps_per_core"] = 1e6 / postgres.cpu_us
    return out

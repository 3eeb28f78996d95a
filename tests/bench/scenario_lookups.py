"""Look-ups: p50 / p99 of each look-up route with `recipients` recipients in the archive, on
SQLite and on Postgres, through a real stats process.

The archive is filled straight into its tables (COPY on Postgres, one transaction of
executemany on SQLite), the way the archive writer would have left it: half the recipients in
messages of `big` recipients (MAX_RECIPIENTS is 50,000: the largest a message's counts by state
can be), the rest in messages of 500, spread over 200 topics and the last 14 days; each address
gets about four messages, and every recipient a `sent` event plus one for its last state. Each
route is then asked `requests` times about random keys (a random page of a random message, a
random address...), one request at a time.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.cursor import encode_cursor
from sesflow.stats.archive.db import connect_archive
from sesflow.stats.archive.lookups import RECIPIENTS, TOPICS

from bench.benchkit import cluster, http_session, percentile, redis_server, start_role
from support.archivefill import EVENT_COLUMNS, MESSAGE_COLUMNS, RECIPIENT_COLUMNS, insert_sql
from support.postgres import PostgresServer

SMALL = 500  # recipients of an ordinary message
TOPIC_COUNT = 200
SPAN_MS = 14 * 86400 * 1000
STATES = (
    ("delivered", 70),
    ("opened", 15),
    ("sent", 6),
    ("bounced", 3),
    ("queued", 3),
    ("complained", 1),
    ("failed", 1),
    ("clicked", 1),
)
ROUTES = ("message", "recipients", "recipient_events", "topics", "topic_messages")
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Size:
    recipients: int
    big: int  # recipients of a big message
    requests: int  # per route and backend


@dataclass
class Archive:
    """What was written: the keys the requests pick from."""

    messages: list[tuple[str, int]]  # (msg_id, recipients)
    addresses: int
    topics: list[tuple[int, str]]  # (last_at_ms, topic)


def plan(size: Size, now_ms: int) -> list[tuple[str, str, int, int]]:
    """(msg_id, topic, recipients, accepted_at_ms) of every message."""
    sizes = [size.big] * (size.recipients // 2 // size.big)
    rest = size.recipients - sum(sizes)
    sizes += [SMALL] * (rest // SMALL) + ([rest % SMALL] if rest % SMALL else [])
    rng = random.Random(7)
    rng.shuffle(sizes)
    out = []
    for m, count in enumerate(sizes):
        accepted = now_ms - SPAN_MS + m * (SPAN_MS // len(sizes))
        out.append((f"{accepted}-{m}", f"topic-{m % TOPIC_COUNT}", count, accepted))
    return out


def rows(size: Size, now_ms: int) -> tuple[Archive, dict[str, Any]]:
    """Every table's rows (generators for the two big ones) and the keys to ask about."""
    messages = plan(size, now_ms)
    addresses = max(1, size.recipients // 4)
    names = [s for s, _ in STATES]
    weights = [w for _, w in STATES]
    topics: dict[str, tuple[int, int, int]] = {}
    for _, topic, _, at in messages:
        first, last, n = topics.get(topic, (at, at, 0))
        topics[topic] = (min(first, at), max(last, at), n + 1)

    def recipient_rows() -> Iterator[tuple[Any, ...]]:
        rng = random.Random(1)
        k = 0  # recipients so far: every address gets one in turn, about four in all
        for m, (msg_id, _, count, at) in enumerate(messages):
            states = rng.choices(names, weights, k=count)
            for i, state in enumerate(states):
                email = f"user{k % addresses}@example.com"
                k += 1
                sent = at + 1000 + i // 20 if state != "queued" else None
                last = (sent or at) + 60_000 if state not in ("sent", "queued") else (sent or at)
                ses = f"0100019a-{m:06d}-{i:06d}" if sent else ""
                yield (msg_id, i, email, state, 3, ses, state, last, sent, last)

    def event_rows() -> Iterator[tuple[Any, ...]]:
        n = 0
        for r in recipient_rows():
            msg_id, i, email, state, _, ses, _, last, sent, _ = r
            topic = topic_of[msg_id]
            if sent is not None:
                n += 1
                yield (
                    0,
                    f"{sent}-{n}",
                    sent,
                    "sent",
                    topic,
                    msg_id,
                    i,
                    1,
                    email,
                    ses,
                    "",
                    "",
                    "",
                    "",
                )
            if state not in ("sent", "queued"):
                n += 1
                bounce = ("Permanent", "General") if state == "bounced" else ("", "")
                yield (
                    n % 4,
                    f"{last}-{n}",
                    last,
                    state,
                    topic,
                    msg_id,
                    i,
                    1,
                    email,
                    ses,
                    "",
                    *bounce,
                    "",
                )

    topic_of = {msg_id: topic for msg_id, topic, _, _ in messages}
    tables = {
        "messages": [
            (msg_id, topic, f"Subject {msg_id}", "bulk", count, at, None)
            for msg_id, topic, count, at in messages
        ],
        "recipients": recipient_rows(),
        "events": event_rows(),
        "topics": [(t, first, last, n) for t, (first, last, n) in topics.items()],
    }
    archive = Archive(
        [(m[0], m[2]) for m in messages],
        addresses,
        [(last, t) for t, (_, last, _) in topics.items()],
    )
    return archive, tables


COLUMNS = {
    "messages": MESSAGE_COLUMNS,
    "recipients": RECIPIENT_COLUMNS,
    "events": EVENT_COLUMNS,
    "topics": ("topic", "first_at_ms", "last_at_ms", "messages"),
}


async def fill_sqlite(path: str, tables: dict[str, Any]) -> None:
    def work() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            for table, values in tables.items():
                sql = insert_sql(table).replace("$", "?")
                conn.executemany(sql, values)
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
        finally:
            conn.close()

    await asyncio.to_thread(work)


async def fill_postgres(url: str, tables: dict[str, Any]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for table, values in tables.items():
            batch: list[tuple[Any, ...]] = []
            for row in values:
                batch.append(row)
                if len(batch) == 100_000:
                    await conn.copy_records_to_table(table, records=batch, columns=COLUMNS[table])
                    batch = []
            if batch:
                await conn.copy_records_to_table(table, records=batch, columns=COLUMNS[table])
        # What autovacuum would do by itself in a while: statistics, and the visibility map
        # that lets a count walk the index alone.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def paths(archive: Archive, rng: random.Random) -> dict[str, str]:
    """One request per route, about random keys (a first page or a page further on)."""
    msg_id, count = rng.choice(archive.messages)
    first_page = rng.random() < 0.5
    after = "" if first_page else "&cursor=" + encode_cursor(RECIPIENTS, (rng.randrange(count),))
    state = "&state=delivered" if rng.random() < 0.3 else ""
    email = f"user{rng.randrange(archive.addresses)}@example.com"
    last_at, topic = rng.choice(archive.topics)
    topics_after = "" if first_page else "&cursor=" + encode_cursor(TOPICS, (last_at, topic))
    return {
        "message": f"/v1/messages/{msg_id}",
        "recipients": f"/v1/messages/{msg_id}/recipients?limit=50{state}{after}",
        "recipient_events": f"/v1/recipients/{quote(email)}/events?limit=50",
        "topics": f"/v1/topics?limit=50{topics_after}",
        "topic_messages": f"/v1/topics/{topic}/messages?limit=50",
    }


async def measure(base: str, archive: Archive, requests: int) -> dict[str, list[float]]:
    rng = random.Random(3)
    times: dict[str, list[float]] = {route: [] for route in ROUTES}
    async with http_session(4) as session:
        for n in range(requests + 10):
            for route, path in paths(archive, rng).items():
                start = time.perf_counter()
                async with session.get(base + path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {path} answered {resp.status}")
                if n >= 10:  # the first few warm connections and caches
                    times[route].append((time.perf_counter() - start) * 1000)
    return times


async def run_backend(backend: str, size: Size, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = PostgresServer().start() if backend == "postgres" else None
    try:
        url = await server.new_database() if server else f"sqlite:///{tmp}/archive.db"
        db = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))  # the schema
        await db.close()
        archive, tables = rows(size, int(time.time() * 1000))
        start = time.perf_counter()
        if server:
            await fill_postgres(url, tables)
        else:
            await fill_sqlite(f"{tmp}/archive.db", tables)
        out[f"lookups_fill_s_{backend}"] = time.perf_counter() - start
        with redis_server() as redis, cluster(redis.url, ARCHIVE_URL=url) as c:
            await start_role(c, "stats")
            times = await measure(c.url("stats"), archive, size.requests)
        for route, values in times.items():
            out[f"lookups_p50_ms_{backend}_{route}"] = percentile(values, 50)
            out[f"lookups_p99_ms_{backend}_{route}"] = percentile(values, 99)
        out[f"lookups_p99_ms_{backend}"] = max(percentile(v, 99) for v in times.values())
    finally:
        if server:
            server.stop()
    return out


async def run_once(size: Size) -> dict[str, Any]:
    import tempfile

    out: dict[str, Any] = {}
    for backend in BACKENDS:
        with tempfile.TemporaryDirectory(prefix="sesflow-bench-archive-") as tmp:
            out.update(await run_backend(backend, size, tmp))
    return out

"""5. Stats: p50 / p99 latency of the stats endpoints after 1M and after 10M recorded events.

How the events are made, quickly but through the real path: the bench XADDs event entries onto
`events` and the stats process consumes them with its own exactly-once aggregation. Each entry
counts `n` recipients (as ingest's `accepted` / `suppressed` events do), so 1M recorded events are
`entries` entries of n = 1M / entries, and the next 9M are as many entries again with a larger n.
The counters are exactly those of 1M (10M) events of n = 1; what an endpoint reads depends on the
number of topics and time buckets (spread here over 200 topics and the last 47 hours, i.e. every
minute bucket of the retention is populated), never on the number of events.

The first burst (1M events) also times the catch-up: the stats process's CPU seconds until every
group on `events` (the counters, the archive, the webhooks' fan-out) has settled it, and the
latency of a topic's counters (`/v1/topics/{id}`) asked back to back meanwhile, as after an
outage of the stats process. The endpoints of the table are timed at rest, after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from sesflow.common.keys import STATS_GROUP, Keys
from sesflow.common.schema import Event, event_fields

from bench.benchkit import (
    cluster,
    cpu_seconds,
    http_session,
    median,
    percentile,
    redis_client,
    redis_server,
    start_role,
)
from support.until import until

KINDS = (
    ("accepted", 30),
    ("sent", 30),
    ("delivered", 25),
    ("opened", 8),
    ("clicked", 3),
    ("bounced", 2),
    ("failed", 1),
    ("complained", 1),
)
SPAN_S = 47 * 3600


@dataclass(frozen=True)
class Size:
    entries: int  # event entries per stage
    topics: int
    requests: int  # per endpoint and stage


def endpoints(topic: str) -> list[str]:
    return [
        f"/v1/topics/{topic}",
        f"/v1/results/count/{topic}",
        "/v1/events/counts/sent",
        "/v1/results/sent?hours=24",
        f"/v1/stats/timeseries?metric=sent&topic={topic}",
        "/v1/stats/timeseries?metric=delivered",
        "/v1/stats/overview",
    ]


async def add_events(client: Any, size: Size, events: int, seed: int) -> str:
    """XADD `size.entries` entries counting `events` recipients in all; returns the last id."""
    rng = random.Random(seed)
    stream = Keys().partition(0).events
    per_entry, extra = divmod(events, size.entries)
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    now_ms = int(time.time() * 1000)
    last = ""
    for start in range(0, size.entries, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + 1000, size.entries)):
            kind = rng.choices(names, weights)[0]
            event = Event(
                type=kind,
                ts=now_ms - rng.randrange(SPAN_S * 1000),
                topic=f"topic-{rng.randrange(size.topics)}",
                msg_id=f"{now_ms}-{n}",
                n=per_entry + (1 if n < extra else 0),
                bounce_type="Permanent" if kind == "bounced" else "",
                unique=kind in {"opened", "clicked"},
            )
            pipe.xadd(stream, event_fields(event))
        last = (await pipe.execute())[-1]
    return str(last)


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def consumed(client: Any, last_id: str) -> bool:
    """Every group of the stats process (the counters, the archive, the webhooks' fan-out) has
    read and settled everything up to `last_id`: the endpoints are timed at rest, not while the
    archive still writes the burst the bench added. They may have read past it: the reputation
    guard writes an event of its own when the bench's bounces trip it."""
    groups = await client.xinfo_groups(Keys().partition(0).events)
    if STATS_GROUP not in {group["name"] for group in groups}:
        return False
    return all(
        stream_id(group["last-delivered-id"]) >= stream_id(last_id) and int(group["pending"]) == 0
        for group in groups
    )


async def timed_get(session: Any, base: str, path: str) -> float:
    """Milliseconds for one GET answered 200, body read."""
    start = time.perf_counter()
    async with session.get(base + path) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}")
    return (time.perf_counter() - start) * 1000


async def latencies(session: Any, base: str, path: str, count: int) -> list[float]:
    out = [await timed_get(session, base, path) for _ in range(count + 5)]
    return out[5:]  # the first few warm connections and caches


async def measure(session: Any, base: str, size: Size) -> tuple[float, float, dict[str, Any]]:
    detail = {}
    p50s, p99s = [], []
    for path in endpoints("topic-0"):
        values = await latencies(session, base, path, size.requests)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        detail[path] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
        p50s.append(p50)
        p99s.append(p99)
    return median(p50s), max(p99s), detail


async def catching_up(client: Any, session: Any, base: str, last_id: str) -> list[float]:
    """Latencies of one topic's counters, asked back to back until the burst up to `last_id`
    is settled by every group (at least once)."""
    meanwhile = []
    while True:
        meanwhile.append(await timed_get(session, base, "/v1/topics/topic-0"))
        if await consumed(client, last_id):
            return meanwhile


async def run_once(size: Size) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with redis_server() as server, cluster(server.url, STATS_BATCH_SIZE="1000") as c:
        stats = await start_role(c, "stats")
        assert stats.proc is not None
        base = c.url("stats")
        async with redis_client(server.url) as client, http_session(4) as session:
            total = 0
            for label, events in (("1M", 1_000_000), ("10M", 9_000_000)):
                start = time.perf_counter()
                last = await add_events(client, size, events, seed=total)
                if label == "1M":
                    cpu = cpu_seconds(stats.proc.pid)
                    meanwhile = await asyncio.wait_for(
                        catching_up(client, session, base, last), timeout=600
                    )
                    out["stats_catchup_cpu_s"] = cpu_seconds(stats.proc.pid) - cpu
                    out["stats_catchup_p50_ms"] = percentile(meanwhile, 50)
                    out["stats_catchup_p99_ms"] = percentile(meanwhile, 99)
                await until(partial(consumed, client, last), what="stats", within=600, every=0.1)
                total += events
                out[f"stats_load_s_{label}"] = time.perf_counter() - start
                global_key = Keys().partition(0).stats_global
                counted = sum(int(v) for v in (await client.hgetall(global_key)).values())
                if counted < total:
                    raise RuntimeError(f"stats counted {counted} of {total} events")
                p50, p99, detail = await measure(session, base, size)
                out[f"stats_p50_ms_{label}"] = p50
                out[f"stats_p99_ms_{label}"] = p99
                out[f"stats_endpoints_{label}"] = detail
    out["stats_p99_ratio_10M_1M"] = out["stats_p99_ms_10M"] / out["stats_p99_ms_1M"]
    return out

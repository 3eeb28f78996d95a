"""What every benchmark scenario shares: a fresh redis-server, the SES stub process, role processes,
queueing jobs, process CPU, percentiles and the shape of a result."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess, free_port, port_open
from sesflow.common.keys import Keys
from sesflow.common.producer import enqueue
from sesflow.common.schema import MessageRequest

from support.ingestkit import pump_backlogs
from support.procs import Cluster, RoleProcess
from support.stubprocess import Option, StubProcess
from support.until import until

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
SENDER = "bench@example.com"
# A typical newsletter body: ~4 KB of HTML with a few links.
HTML = (
    "<html><body><h1>News</h1>"
    + '<p>Lorem ipsum dolor sit amet, <a href="https://example.com/a">consectetur</a> elit.</p>'
    * 40
    + "</body></html>"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One figure of the table: how it is shown and what it is held against."""

    key: str
    label: str
    unit: str
    target: str = ""  # shown as is, e.g. "≥ 50,000"
    check: Callable[[float], bool] | None = None
    digits: int = 0


@dataclass
class ScenarioResult:
    name: str
    runs: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of timestamps in any half-open window [t, t + window) (sliding)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc; its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def redis_server() -> Iterator[RedisProcess]:
    """A fresh redis-server on a free loopback port, no AOF (benchmarks, not durability)."""
    with tempfile.TemporaryDirectory(prefix="sesflow-bench-") as tmp:
        server = RedisProcess(Path(tmp), aof=False).start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def ses_stub(**options: Option) -> Iterator[str]:
    """The bench stub as its own process (its CPU is not the sender's); yields its URL."""
    with StubProcess(None, module="bench.bench_stub", **options) as stub:
        yield stub.url


@contextlib.contextmanager
def cluster(redis_url: str, **env: str) -> Iterator[Cluster]:
    """Role processes on free ports; every one of them is stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="sesflow-bench-logs-") as tmp:
        c = Cluster(
            redis_url,
            Path(tmp),
            EMAIL_SENDER=SENDER,
            LOG_LEVEL="info",
            **CREDENTIALS,
            **env,
        )
        try:
            yield c
        finally:
            codes = c.stop_all()
            # -SIGTERM: a second SIGTERM from stop_all() after the role had already stopped cleanly
            crashed = {n: code for n, code in codes.items() if code not in (0, None, -15)}
            if crashed:
                print(f"role exit codes: {crashed}\n{c.all_logs()}", file=sys.stderr)


async def wait_port(port: int, proc: RoleProcess | None = None, seconds: float = 30.0) -> None:
    async def listening() -> bool:
        if proc is not None and not proc.running:
            raise RuntimeError(f"{proc.name} exited:\n{proc.logs()[-3000:]}")
        return port_open("127.0.0.1", port)

    await until(listening, what=f"a listener on port {port}", within=seconds)


async def start_role(c: Cluster, role: str, name: str = "", **env: str) -> RoleProcess:
    """Start a role and wait until it listens (a sender: its metrics port)."""
    if role == "sender":
        env.setdefault("SENDER_METRICS_PORT", str(free_port()))
        proc = c.start(role, name=name, **env)
        await wait_port(int(env["SENDER_METRICS_PORT"]), proc)
    else:
        proc = c.start(role, name=name, **env)
        await wait_port(c.ports[role], proc)
    return proc


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def http_session(limit: int = 64) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# --- work ------------------------------------------------------------------------------------


def emails(message: int, count: int) -> list[str]:
    return [f"user{message}-{n}@example.com" for n in range(count)]


def message(n: int, recipients: int, topic: str = "bench") -> MessageRequest:
    return MessageRequest(
        topic_id=topic,
        emails=emails(n, recipients),
        subject=f"Bench {n}",
        content=HTML,
        track_opens=True,
        track_clicks=False,
    )


async def queued_jobs(client: Any) -> int:
    """Jobs queued for the senders: on `sends`, or waiting for the pump in a backlog (a topic's
    bulk list, or the transactional list)."""
    part = Keys().partition(0)
    topics = await client.zrange(part.backlog_topics, 0, -1)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(part.sends)
        pipe.llen(part.transactional)
        for topic in topics:
            pipe.llen(part.backlog(topic))
        counts = await pipe.execute()
    return sum(int(n) for n in counts)


async def pump_all(client: Any) -> int:
    """Move every backlog to `sends` at once, as the pump would a little at a time (the old
    path: jobs straight on `sends`); how many moved."""
    return await pump_backlogs(client, Keys().partition(0))


async def queue_jobs(
    c: Cluster, client: Any, messages: int, per_message: int, *, on_sends: bool = False
) -> None:
    """`messages` x `per_message` jobs queued, through the producer and ingest's dispatcher (the
    ingest process is stopped afterwards so it costs nothing during the measurement). They wait
    in the topic's backlog for the senders' pump, or with `on_sends` all on `sends` already."""
    ingest = await start_role(c, "ingest", name=f"ingest-queue-{time.monotonic_ns()}")
    before = await queued_jobs(client)
    keys = Keys()
    for n in range(messages):
        await enqueue(client, keys, message(n + before, per_message))
    total = before + messages * per_message

    async def queued() -> bool:
        return await queued_jobs(client) >= total

    await until(queued, what="jobs queued", within=120)
    ingest.stop()
    if on_sends:
        await pump_all(client)


async def stub_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/stub/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def stub_times(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/bench/times") as resp:
        data: dict[str, Any] = await resp.json()
        return data

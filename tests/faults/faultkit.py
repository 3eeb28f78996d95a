"""Pieces shared by the fault cases: the SES stub as its own process, a campaign posted through
ingest, and the checks every case makes on what Redis and the stub say happened.

The stub runs as a separate process (not in the test's event loop) so that a test may block,
wait for a process or stop Redis without ever delaying an SES answer: a delayed answer would turn
into a timeout in a sender and show up as an `unknown` the fault did not cause.
"""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from sesflow_procs import ROOT, Cluster, RoleProcess

from sesflow.cli.embedded import port_open
from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.keys import DISPATCH_GROUP, SENDERS_GROUP, STATS_GROUP, Keys

SENDER = "noreply@sesflow.test"
REGION = "us-east-1"
KEYS = Keys("sesflow")
FINAL_PREFIXES = ("s:", "f:", "x", "p", "u")


class StubProcess:
    """`tests/sesstub.py` as a process: knobs through POST /stub/control, counts through
    GET /stub/stats (per recipient with `recipients=True`)."""

    def __init__(self, log_dir: Path, **options: float | int | str) -> None:
        self.options = options
        self.log_path = log_dir / "sesstub.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 15.0) -> StubProcess:
        args = [sys.executable, str(ROOT / "tests" / "sesstub.py"), "--port", "0"]
        for name, value in self.options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        assert self.proc.stdout is not None
        # the stub prints its URL on one line when it is ready
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"SES stub did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def control(self, **changes: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/stub/control", json=changes) as resp,
        ):
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def stats(self, recipients: bool = False) -> dict[str, Any]:
        query = "?recipients=1" if recipients else ""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/stub/stats{query}") as resp,
        ):
            data: dict[str, Any] = await resp.json()
            return data


def cluster_env(stub: StubProcess, **env: str) -> dict[str, str]:
    """What every fault case's roles share: the stub as SES, quick reclaim and flushes."""
    base = {
        "SES_ENDPOINT_URL": stub.url,
        "AWS_REGION": REGION,
        "EMAIL_SENDER": SENDER,
        "SES_TIMEOUT": "5",
        "LOG_LEVEL": "info",
        **LOCAL_CREDENTIALS,
    }
    base.update(env)
    return base


def emails_for(topic: str, count: int) -> list[str]:
    return [f"{topic}-{n}@example.org" for n in range(count)]


async def post_campaign(
    http: aiohttp.ClientSession, cluster: Cluster, topic: str, emails: list[str]
) -> str:
    """POST one message to ingest; returns its msg_id."""
    body = {
        "messages": [
            {"topic_id": topic, "emails": emails, "subject": "Fault run", "content": "<p>Hi</p>"}
        ]
    }
    async with http.post(f"{cluster.url('ingest')}/v1/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
    assert answer["count"] == len(emails), answer
    return str(answer["messages"][0]["id"])


async def until(
    fetch: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    seconds: float,
    what: str,
    cluster: Cluster | None = None,
) -> Any:
    """Poll `fetch()` until `done(result)`; fail with `what` (and the roles' logs) after
    `seconds`. Redis being briefly unreachable counts as not done yet."""
    deadline = time.monotonic() + seconds
    result: Any = None
    while True:
        try:
            result = await fetch()
            if done(result):
                return result
        except (RedisConnectionError, aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            logs = cluster.all_logs() if cluster is not None else ""
            raise AssertionError(
                f"timed out after {seconds}s waiting for {what}: {result!r}\n{logs}"
            )
        await asyncio.sleep(0.1)


async def states(client: aioredis.Redis, msg_id: str) -> dict[int, str]:
    raw = await client.hgetall(KEYS.for_message(msg_id).state(msg_id))
    return {int(k): str(v) for k, v in raw.items()}


def is_final(state: str) -> bool:
    return state.startswith(FINAL_PREFIXES) and not state.startswith("i:")


async def all_final(client: aioredis.Redis, msg_id: str, count: int) -> bool:
    found = await states(client, msg_id)
    return len(found) == count and all(is_final(v) for v in found.values())


async def sent_count(stub: StubProcess) -> int:
    return int((await stub.stats())["sent"])


def inflight_of(found: dict[int, str], pid: int) -> set[int]:
    """Indexes whose state is an inflight claim of the process `pid` (consumer host-pid-rand)."""
    return {i for i, v in found.items() if v.startswith("i:") and f"-{pid}-" in v}


@dataclass
class Verdict:
    sent: int
    unknown: int
    states: dict[int, str]
    stub_counts: Counter[str]


async def check_exactly_once(
    client: aioredis.Redis,
    stub: StubProcess,
    msg_id: str,
    emails: list[str],
    *,
    ambiguous: set[int] | None = None,
    resend: bool = False,
    queued: Collection[str] = (),
) -> Verdict:
    """The promise, recipient by recipient:

    - every recipient is in exactly one final state, and it is `s` (sent) or `u` (unknown);
    - a recipient the stub saw once is `s`, and a `s` recipient was seen exactly once;
    - an `u` recipient was seen at most once (ON_AMBIGUOUS=skip never re-sends);
    - `ambiguous` (when given) bounds where `u`, or with `resend` a second copy, may happen:
      only recipients whose claim a killed sender held at the kill;
    - SES got no address that was never queued (`queued`: every address of the run, when
      other messages than this one were sent).
    """
    found = await states(client, msg_id)
    stats = await stub.stats(recipients=True)
    counts: Counter[str] = Counter(stats["recipients"])
    assert set(found) == set(range(len(emails))), "some recipients have no state at all"
    strangers = set(counts) - set(emails) - set(queued)
    assert not strangers, f"SES got recipients that were never queued: {sorted(strangers)[:5]}"
    problems: list[str] = []
    for index, email in enumerate(emails):
        state, seen = found[index], counts[email]
        if state.startswith("s:"):
            ok = seen == 1 or (
                resend and seen == 2 and ambiguous is not None and index in ambiguous
            )
        elif state == "u":
            ok = seen <= 1 and not resend and (ambiguous is None or index in ambiguous)
        else:
            ok = False
        if not ok:
            problems.append(f"{index} {email}: state {state!r}, SES saw it {seen}x")
    assert not problems, f"{len(problems)} recipients break the promise: {problems[:10]}"
    return Verdict(
        sent=sum(1 for v in found.values() if v.startswith("s:")),
        unknown=sum(1 for v in found.values() if v == "u"),
        states=found,
        stub_counts=counts,
    )


async def leftovers(client: aioredis.Redis) -> dict[str, int]:
    """What is still unacknowledged by each group, and jobs that were dead-lettered."""
    found = {"requests": int((await client.xpending(KEYS.requests, DISPATCH_GROUP))["pending"])}
    for part in KEYS.partitions:
        found[f"sends/{part.index}"] = int(
            (await client.xpending(part.sends, SENDERS_GROUP))["pending"]
        )
        found[f"events/{part.index}"] = int(
            (await client.xpending(part.events, STATS_GROUP))["pending"]
        )
        found[f"sends_dead/{part.index}"] = int(await client.xlen(part.sends_dead))
    return found


async def check_nothing_pending(client: aioredis.Redis, cluster: Cluster) -> None:
    """Every group on every stream acknowledges everything it was given, and no job of `sends`
    ends up dead-lettered."""
    await until(
        lambda: leftovers(client),
        lambda found: not any(found.values()),
        15,
        "nothing pending",
        cluster,
    )


async def topic_stats(http: aiohttp.ClientSession, cluster: Cluster, topic: str) -> dict[str, Any]:
    async with http.get(f"{cluster.url('stats')}/v1/topics/{topic}") as resp:
        if resp.status != 200:
            return {}
        data: dict[str, Any] = await resp.json()
        return data


async def check_stats_agree(
    http: aiohttp.ClientSession, cluster: Cluster, topic: str, verdict: Verdict
) -> dict[str, Any]:
    """stats counts what Redis holds: total, sent, unknown, nothing failed, nothing pending."""
    total = len(verdict.states)

    def agrees(view: dict[str, Any]) -> bool:
        return (
            view.get("total") == total
            and view.get("sent") == verdict.sent
            and view.get("unknown") == verdict.unknown
        )

    view = await until(
        lambda: topic_stats(http, cluster, topic), agrees, 20, "stats to agree", cluster
    )
    assert view["failed"] == 0 and view["stopped"] == 0 and view["created"] == 0, view
    return dict(view)


async def wait_exit(proc: RoleProcess, seconds: float) -> int | None:
    """The exit code of a process asked to stop, without blocking the event loop."""
    return await asyncio.to_thread(proc.wait, seconds)


def start_roles(
    cluster: Cluster, senders: int, *, tracker: bool = False, **sender_env: str
) -> list[RoleProcess]:
    """ingest and stats (and the tracker), plus `senders` sender replicas; returns the senders
    once the HTTP roles listen."""
    roles = ["ingest", "stats", *(["tracker"] if tracker else [])]
    for role in roles:
        cluster.start(role)
    started = [cluster.start("sender", name=f"sender-{n}", **sender_env) for n in range(senders)]
    deadline = time.monotonic() + 30
    while not all(port_open("127.0.0.1", cluster.ports[role]) for role in roles):
        dead = [p.name for p in cluster.procs if not p.running]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"roles not listening (dead: {dead})\n{cluster.all_logs()}")
        time.sleep(0.05)
    return started

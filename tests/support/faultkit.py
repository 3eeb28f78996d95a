"""Pieces shared by the fault cases: the SES stub as its own process, a campaign posted through
ingest, and the checks every case makes on what Redis and the stub say happened.

The stub runs as a separate process (not in the test's event loop) so that a test may block,
wait for a process or stop Redis without ever delaying an SES answer: a delayed answer would turn
into a timeout in a sender and show up as an `unknown` the fault did not cause.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.keys import Keys
from sesflow.sender.state import recipient_states

from support.backlog import leftovers
from support.procs import Cluster, RoleProcess
from support.stubprocess import StubProcess
from support.until import until

SENDER = "noreply@sesflow.test"
REGION = "us-east-1"
KEYS = Keys("sesflow")
FINAL_PREFIXES = ("s", "f", "x", "p", "u")  # a final byte, or an older version's text


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


# While a fault is on, Redis or a role may be unreachable: that is "not yet", not a failure.
UNREACHABLE = (RedisConnectionError, aiohttp.ClientError, OSError)


async def states(client: aioredis.Redis, msg_id: str) -> dict[int, str]:
    return await recipient_states(client, KEYS.for_message(msg_id), msg_id)


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


@dataclass(frozen=True)
class Expect:
    """What a fault case allows: `ambiguous` (when given) bounds where `u`, or with `resend` a
    second copy, may happen; `queued` lists every address of the run when other messages than
    the one checked were sent."""

    ambiguous: set[int] | None = None
    resend: bool = False
    queued: Collection[str] = ()


async def check_exactly_once(
    client: aioredis.Redis,
    stub: StubProcess,
    msg_id: str,
    emails: list[str],
    expect: Expect = Expect(),
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
    ambiguous, resend, queued = expect.ambiguous, expect.resend, expect.queued
    found = await states(client, msg_id)
    stats = await stub.stats(recipients=True)
    counts: Counter[str] = Counter(stats["recipients"])
    assert set(found) == set(range(len(emails))), "some recipients have no state at all"
    strangers = set(counts) - set(emails) - set(queued)
    assert not strangers, f"SES got recipients that were never queued: {sorted(strangers)[:5]}"
    problems: list[str] = []
    for index, email in enumerate(emails):
        state, seen = found[index], counts[email]
        if state == "s":
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
        sent=sum(1 for v in found.values() if v == "s"),
        unknown=sum(1 for v in found.values() if v == "u"),
        states=found,
        stub_counts=counts,
    )


async def all_sent_once(
    client: aioredis.Redis, stub: StubProcess, cluster: Cluster, msg_id: str, emails: list[str]
) -> Verdict:
    """Wait until every recipient of `msg_id` is final, then check that each was sent exactly
    once (no ambiguity allowed) and that all were sent."""
    await until(
        lambda: all_final(client, msg_id, len(emails)),
        what="every recipient to be final",
        within=60,
        ignore=UNREACHABLE,
        context=cluster.all_logs,
    )
    verdict = await check_exactly_once(client, stub, msg_id, emails, Expect(ambiguous=set()))
    assert verdict.sent == len(emails), verdict
    return verdict


async def check_nothing_pending(client: aioredis.Redis, cluster: Cluster) -> None:
    """Every group on every stream acknowledges everything it was given, and no job of `sends`
    ends up dead-lettered."""
    await until(
        lambda: leftovers(client),
        lambda found: not any(found.values()),
        what="nothing pending",
        within=15,
        ignore=UNREACHABLE,
        context=cluster.all_logs,
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
        lambda: topic_stats(http, cluster, topic),
        agrees,
        what="stats to agree",
        within=20,
        ignore=UNREACHABLE,
        context=cluster.all_logs,
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
    cluster.wait_listening(roles)
    return started

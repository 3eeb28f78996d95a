"""9. Sharing one account: EMAIL_RATE=200 against a stub enforcing 200/s, a bulk campaign of
`campaign` recipients (topic `campaign`, messages of 1,000 over HTTP) keeping the rate busy, with
1 and then 4 sender replicas (defaults otherwise: SENDER_CONCURRENCY=100, SEND_MODE=bulk).

- Fairness: once the campaign sends, a 100-recipient topic is posted; its fair share is half the
  rate, so 1 s; the ratio is (its last recipient at the stub - its POST) / 1 s.
- Transactional latency: then single-recipient `lane: transactional` messages are posted at
  5/s for `tx_seconds`; latency = the stub's receive time of the recipient's X-Request-ID -
  the POST's start; p50 and p99.
- The pump's cost, during that phase (1 replica): its script calls per recipient sent (XINFO
  calls in INFO commandstats: only the pump asks XINFO that often), and from a separate loop of
  `pump_calls` calls that each move what one call moves at 200/s (4 jobs, a reader taking them
  between calls): the client CPU and the Redis CPU of one call, times the calls per recipient.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.settings import settings_from_mapping
from sesflow.sender.pump import BUSY_INTERVAL_S, Pump

from bench.benchkit import (
    HTML,
    cluster,
    cpu_seconds,
    http_session,
    percentile,
    redis_client,
    redis_server,
    ses_stub,
    start_role,
    stub_stats,
    stub_times,
)
from support.procs import RoleProcess
from support.until import until

RATE = 200
SMALL = 100  # the topic posted after the campaign
TX_PER_SECOND = 5
PER_MESSAGE = 1000


@dataclass(frozen=True)
class Size:
    campaign: int  # bulk recipients queued before the measurements
    tx_seconds: float  # seconds of transactional posts
    pump_calls: int  # calls of the pump microbenchmark


async def post(session: Any, url: str, topic: str, emails: list[str], **extra: Any) -> str:
    """POST one message; its msg_id."""
    body = {"topic_id": topic, "emails": emails, "subject": "S", "content": HTML, **extra}
    async with session.post(f"{url}/v1/messages", json={"messages": [body]}) as resp:
        answer = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"POST answered {resp.status}: {answer}")
    return str(answer["messages"][0]["id"])


async def seen_all(session: Any, stub_url: str, rids: list[str]) -> dict[str, float]:
    """When the stub first received each of `rids`; {} until it has received them all."""
    seen: dict[str, float] = (await stub_times(session, stub_url))["rids"]
    return seen if all(rid in seen for rid in rids) else {}


async def xinfo_calls(client: Any) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_xinfo"))


async def shared(size: Size, replicas: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with (
        ses_stub(rate=RATE, record_rids=True) as stub_url,
        redis_server() as server,
        cluster(server.url, SES_ENDPOINT_URL=stub_url, EMAIL_RATE=str(RATE)) as c,
    ):
        async with http_session() as session, redis_client(server.url) as client:
            await start_role(c, "ingest")
            senders = await asyncio.gather(
                *(start_role(c, "sender", name=f"sender-{n}") for n in range(replicas))
            )
            ingest = c.url("ingest")
            for first in range(0, size.campaign, PER_MESSAGE):
                count = min(PER_MESSAGE, size.campaign - first)
                emails = [f"c{first + i}@example.com" for i in range(count)]
                await post(session, ingest, "campaign", emails)

            async def busy() -> bool:
                return bool((await stub_stats(session, stub_url))["sent"] >= RATE)

            await until(busy, what="the campaign to send", within=60)

            # fairness: a small topic joins the campaign
            posted = time.time()
            small = await post(
                session, ingest, "small", [f"s{i}@example.com" for i in range(SMALL)]
            )
            rids = [f"{small}_{i}" for i in range(SMALL)]
            seen = await until(
                lambda: seen_all(session, stub_url, rids), what="small", within=120, every=0.1
            )
            fair_s = SMALL / (RATE / 2)
            out["fair_ratio"] = (max(seen[r] for r in rids) - posted) / fair_s

            # transactional mail while the campaign saturates the rate
            xinfo_before, sent_before = await xinfo_calls(client), await sent(session, stub_url)
            cpu_before = [cpu(p) for p in senders]
            sent_at: dict[str, float] = {}
            tasks = []

            async def post_tx(n: int) -> None:
                at = time.time()
                msg_id = await post(
                    session, ingest, "receipts", [f"t{n}@example.com"], lane="transactional"
                )
                sent_at[f"{msg_id}_0"] = at

            for n in range(int(size.tx_seconds * TX_PER_SECOND)):
                tasks.append(asyncio.create_task(post_tx(n)))
                await asyncio.sleep(1 / TX_PER_SECOND)
            await asyncio.gather(*tasks)
            seen = await until(
                lambda: seen_all(session, stub_url, list(sent_at)),
                what="transactional",
                within=120,
                every=0.1,
            )
            recipients = await sent(session, stub_url) - sent_before
            out["pump_calls_per_recipient"] = (await xinfo_calls(client) - xinfo_before) / max(
                1, recipients
            )
            out["sender_cpu_us"] = (
                (sum(cpu(p) for p in senders) - sum(cpu_before)) / max(1, recipients) * 1e6
            )
            if (await stub_stats(session, stub_url))["sent"] >= size.campaign:
                raise RuntimeError("the campaign ended before the measurements did")
    latencies = [(seen[rid] - at) * 1000 for rid, at in sent_at.items()]
    out["tx_p50_ms"] = percentile(latencies, 50)
    out["tx_p99_ms"] = percentile(latencies, 99)
    out["tx_max_ms"] = max(latencies)
    return out


async def sent(session: Any, stub_url: str) -> int:
    return int((await stub_stats(session, stub_url))["sent"])


def cpu(proc: RoleProcess) -> float:
    return cpu_seconds(proc.proc.pid) if proc.proc is not None else 0.0


async def pump_call_cost(calls: int) -> tuple[float, float]:
    """(client CPU, Redis CPU) in µs of one pump call that moves what one call moves at RATE (a
    reader takes and acknowledges that much between calls). Redis CPU: the EVALSHA time of INFO
    commandstats (the reader's XREADGROUPs are counted apart)."""
    keys = Keys()
    part = keys.partition(0)
    secret = "bench-tracking-secret-0123456789"
    settings = settings_from_mapping({"EMAIL_RATE": str(RATE), "TRACKING_SECRET": secret})
    per_call = max(1, round(RATE * BUSY_INTERVAL_S))
    with redis_server() as server:
        async with redis_client(server.url) as client:
            await client.xgroup_create(part.sends, SENDERS_GROUP, id="0", mkstream=True)
            lines = [f"1-0\t{i}\tu{i}@example.com" for i in range(calls * per_call + 1000)]
            for start in range(0, len(lines), 10_000):
                await client.rpush(part.backlog("t"), *lines[start : start + 10_000])
            await client.zadd(part.backlog_topics, {"t": 0})
            pump = Pump(settings, client, keys)
            await pump.top_up()  # `sends` at its depth
            client_cpu = 0.0
            redis_before = await evalsha_usec(client)
            for _ in range(calls):
                reply = await client.xreadgroup(
                    SENDERS_GROUP, "r", {part.sends: ">"}, count=per_call
                )
                # the sender is done with them: acknowledged, as after their record
                await client.xack(part.sends, SENDERS_GROUP, *(i for i, _ in reply[0][1]))
                started = time.process_time()
                if await pump.top_up() != per_call:
                    raise RuntimeError("the pump did not move what the reader took")
                client_cpu += time.process_time() - started
            redis_usec = await evalsha_usec(client) - redis_before
    return client_cpu / calls * 1e6, redis_usec / calls


async def evalsha_usec(client: Any) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def run_once(size: Size) -> dict[str, float]:
    out: dict[str, float] = {}
    client_us, redis_us = await pump_call_cost(size.pump_calls)
    for replicas in (1, 4):
        figures = await shared(size, replicas)
        out.update({f"r{replicas}_{k}": v for k, v in figures.items()})
    out["pump_call_client_us"] = client_us
    out["pump_call_redis_us"] = redis_us
    calls = out["r1_pump_calls_per_recipient"]
    out["pump_client_us_per_recipient"] = client_us * calls
    out["pump_redis_us_per_recipient"] = redis_us * calls
    return out

"""2. Sender capacity: SES calls per second of one sender process with the rate limit lifted,
against the stub at 0 ms and 20 ms, and its CPU per call; side by side in the same run:

- sesflow's sender with SES_CLIENT=boto3 (boto3 in a thread pool, max_attempts=1);
- a plain boto3 loop calling `send_email` per recipient (what a user writes by hand);
- the SES clients alone (no Redis, no queue): `SesClient` with 16 calls in flight vs boto3.
"""

from __future__ import annotations

import asyncio
import operator
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from sesflow.common.settings import settings_from_mapping

from bench.benchkit import (
    CREDENTIALS,
    cluster,
    cpu_seconds,
    http_session,
    queue_jobs,
    redis_client,
    redis_server,
    ses_stub,
    start_role,
    stub_stats,
)
from sender_client.measure_cpu import boto3_loop, ours
from support.until import until

# The measurement window: from this share of the jobs sent to that share (skips start-up and the
# tail where the queue runs dry).
WINDOW = (0.1, 0.9)


@dataclass(frozen=True)
class Size:
    jobs: int  # per sender run
    loop_calls: int  # boto3 loop at 0 ms (at 20 ms a tenth)
    client_calls: int  # SES clients alone


async def sender_run(stub_url: str, jobs: int, ses_client: str) -> tuple[float, float]:
    """(calls/s, CPU seconds per call) of one sender process draining `jobs` queued jobs."""
    with redis_server() as server, cluster(server.url, SES_ENDPOINT_URL=stub_url) as c:
        async with redis_client(server.url) as client, http_session() as session:
            await queue_jobs(c, client, max(1, jobs // 1000), min(jobs, 1000))
            base = (await stub_stats(session, stub_url))["sent"]
            sender = await start_role(
                c,
                "sender",
                EMAIL_RATE="1000000000",
                EMAIL_BURST="1000",
                SES_CLIENT=ses_client,
            )
            assert sender.proc is not None
            pid = sender.proc.pid
            low, high = (base + int(jobs * share) for share in WINDOW)
            samples: list[tuple[float, float, int]] = []

            async def sent() -> int:
                if not sender.running:
                    raise RuntimeError(f"the sender exited:\n{sender.logs()[-3000:]}")
                return int((await stub_stats(session, stub_url))["sent"])

            for mark in (low, high):
                reached = await until(
                    sent,
                    partial(operator.le, mark),
                    what=f"{mark - base} sends",
                    within=600,
                    every=0.02,
                )
                samples.append((time.perf_counter(), cpu_seconds(pid), reached))
    (t0, cpu0, n0), (t1, cpu1, n1) = samples
    calls = n1 - n0
    return calls / (t1 - t0), (cpu1 - cpu0) / calls


def loop_run(stub_url: str, calls: int) -> tuple[float, float]:
    """(calls/s, CPU seconds per call) of a plain boto3 loop, one call per recipient."""
    settings = settings_from_mapping({"SES_ENDPOINT_URL": stub_url, **CREDENTIALS})
    start = time.perf_counter()
    cpu = boto3_loop(settings, calls)  # 50 warm-up calls, then `calls` measured for CPU
    elapsed = time.perf_counter() - start
    return (calls + 50) / elapsed, cpu


async def run_once(size: Size) -> dict[str, Any]:
    out: dict[str, float] = {}
    for latency in (0, 20):
        with ses_stub(latency_ms=latency) as url:
            rate, cpu = await sender_run(url, size.jobs, "native")
            b_rate, b_cpu = await sender_run(url, size.jobs, "boto3")
            loop_calls = size.loop_calls if latency == 0 else max(20, size.loop_calls // 10)
            l_rate, l_cpu = await asyncio.to_thread(loop_run, url, loop_calls)
        out |= {
            f"sender_{latency}ms_cps": rate,
            f"sender_{latency}ms_cpu_us": cpu * 1e6,
            f"sender_boto3_{latency}ms_cps": b_rate,
            f"sender_boto3_{latency}ms_cpu_us": b_cpu * 1e6,
            f"loop_{latency}ms_cps": l_rate,
            f"loop_{latency}ms_cpu_us": l_cpu * 1e6,
            f"ratio_{latency}ms_vs_loop": rate / l_rate,
            f"ratio_{latency}ms_vs_sender_boto3": rate / b_rate,
        }
    out["ratio_per_core_vs_loop"] = out["loop_0ms_cpu_us"] / out["sender_0ms_cpu_us"]
    # The SES clients alone, in this process: the client CPU per call.
    with ses_stub() as url:
        settings = settings_from_mapping({"SES_ENDPOINT_URL": url, **CREDENTIALS})
        client_cpu = await ours(settings, size.client_calls, 16)
        loop_cpu = await asyncio.to_thread(boto3_loop, settings, size.client_calls)
    out["client_cpu_us"] = client_cpu * 1e6
    out["client_boto3_cpu_us"] = loop_cpu * 1e6
    out["client_ratio_per_core"] = loop_cpu / client_cpu
    return out

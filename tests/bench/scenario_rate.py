"""3. Rate precision: EMAIL_RATE=200 shared by 4 sender replicas, against a stub that enforces
exactly 200 recipients/s (token bucket of 20, a tenth of a second): the most sends in any
1-second window (sliding over the stub's receive times), the mean rate, and the 429s."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.benchkit import (
    cluster,
    http_session,
    max_in_window,
    queue_jobs,
    redis_client,
    redis_server,
    ses_stub,
    start_role,
    stub_stats,
    stub_times,
)

RATE = 200
REPLICAS = 4


@dataclass(frozen=True)
class Size:
    seconds: float


async def run_once(size: Size) -> dict[str, float]:
    jobs = int(RATE * (size.seconds + 5))
    with (
        ses_stub(rate=RATE) as url,
        redis_server() as server,
        cluster(server.url, SES_ENDPOINT_URL=url) as c,
    ):
        async with redis_client(server.url) as client, http_session() as session:
            await queue_jobs(c, client, -(-jobs // 1000), min(jobs, 1000))
            await asyncio.gather(
                *(
                    start_role(c, "sender", name=f"sender-{n}", EMAIL_RATE=str(RATE))
                    for n in range(REPLICAS)
                )
            )
            # every replica is up before the window starts: its first send opens it
            first: float | None = None
            times: list[float] = []
            while first is None or max(times) < first + size.seconds:
                await asyncio.sleep(0.5)
                times = (await stub_times(session, url))["times"]
                first = min(times) if times else None
            throttled = (await stub_stats(session, url))["throttled"]
    window = [t for t in times if first <= t < first + size.seconds]
    return {
        "max_1s_window": float(max_in_window(window)),
        "mean_rate": len(window) / size.seconds,
        "throttled_429": float(throttled),
    }

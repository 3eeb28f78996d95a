"""8. Sending as users run it: the sender's own process CPU per recipient with tracking on (opens
and clicks), the default EMAIL_BURST, and campaigns arriving through the HTTP API while it runs;
unthrottled and at EMAIL_RATE=500, in SEND_MODE=bulk and single. Side by side, in the same run
and on the same stub: a plain boto3 `send_email` loop's CPU per email, the figure to beat.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.benchkit import (
    HTML,
    cluster,
    cpu_seconds,
    http_session,
    redis_server,
    ses_stub,
    start_role,
    stub_stats,
)
from bench.scenario_sender import loop_run
from support.until import until

UNTHROTTLED = 1_000_000_000
RATE = 500
# The measurement window: from this share of the recipients sent to that share.
WINDOW = (0.1, 0.9)
PER_MESSAGE = 1000
# Sent before the measurement: a long-running sender has loaded its caches and made its first
# SES quota reading (a boto3 client: ~0.2 s of CPU once) before a campaign comes.
WARM_UP = 200


def sent_at_least(mark: int, stats: dict[str, Any]) -> bool:
    return int(stats["sent"]) >= mark


@dataclass(frozen=True)
class Size:
    unthrottled: int  # recipients per unthrottled run
    rate_seconds: float  # seconds of sending per EMAIL_RATE=500 run
    loop_calls: int


async def post_campaigns(
    session: Any, url: str, recipients: int, per_second: float, tag: str
) -> None:
    """POST messages of up to PER_MESSAGE recipients, at about `per_second` recipients/s."""
    posted = 0
    n = 0
    started = time.monotonic()
    while posted < recipients:
        count = min(PER_MESSAGE, recipients - posted)
        body = {
            "messages": [
                {
                    "topic_id": f"bench-{tag}",
                    "emails": [f"u{tag}-{n}-{i}@example.com" for i in range(count)],
                    "subject": f"Bench {n}",
                    "content": HTML,
                    "track_opens": True,
                    "track_clicks": True,
                }
            ]
        }
        async with session.post(f"{url}/v1/messages", json=body) as resp:
            if resp.status != 202:
                raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")
        posted += count
        n += 1
        ahead = posted / per_second - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def sender_cpu(stub_url: str, mode: str, rate: float, recipients: int) -> dict[str, float]:
    """CPU seconds per recipient of one sender process, and its recipients/s, between WINDOW's
    shares of `recipients` sent; campaigns are posted while it runs."""
    env = {"SES_ENDPOINT_URL": stub_url, "SEND_MODE": mode, "EMAIL_RATE": str(rate)}
    with redis_server() as server, cluster(server.url, **env) as c:
        async with http_session() as session:
            await start_role(c, "ingest")
            sender = await start_role(c, "sender")
            assert sender.proc is not None
            await post_campaigns(session, c.url("ingest"), WARM_UP, 1e9, f"warm{mode}{rate}")

            async def warm() -> bool:
                return bool((await stub_stats(session, stub_url))["sent"] >= WARM_UP)

            await until(warm, what="the warm-up campaign", within=60)
            await asyncio.sleep(1.0)  # the first quota reading runs one second after start
            base = await stub_stats(session, stub_url)
            # unthrottled: as fast as one client posts; at a rate: a little ahead of it
            pace = 1e9 if rate >= UNTHROTTLED else rate * 1.2
            poster = asyncio.create_task(
                post_campaigns(session, c.url("ingest"), recipients, pace, f"{mode}{rate}")
            )
            samples: list[tuple[float, float, int, int]] = []

            async def stats() -> dict[str, Any]:
                if poster.done() and poster.exception():
                    raise RuntimeError("posting failed") from poster.exception()
                if not sender.running:
                    raise RuntimeError(f"the sender exited:\n{sender.logs()[-3000:]}")
                return await stub_stats(session, stub_url)

            try:
                for share in WINDOW:
                    mark = base["sent"] + int(recipients * share)
                    seen = await until(
                        stats,
                        partial(sent_at_least, mark),
                        what=f"{mark} sends",
                        within=300,
                    )
                    cpu = cpu_seconds(sender.proc.pid)
                    samples.append((time.perf_counter(), cpu, seen["sent"], seen["calls"]))
            finally:
                poster.cancel()
                await asyncio.gather(poster, return_exceptions=True)
    (t0, cpu0, n0, calls0), (t1, cpu1, n1, calls1) = samples
    sent = n1 - n0
    return {
        "cpu_us": (cpu1 - cpu0) / sent * 1e6,
        "rps": sent / (t1 - t0),
        "per_call": sent / max(1, calls1 - calls0),
    }


async def run_once(size: Size) -> dict[str, float]:
    out: dict[str, float] = {}
    with ses_stub() as url:
        _, loop_cpu = await asyncio.to_thread(loop_run, url, size.loop_calls)
        out["loop_cpu_us"] = loop_cpu * 1e6
        for mode in ("bulk", "single"):
            for label, rate, count in (
                ("max", UNTHROTTLED, size.unthrottled),
                (str(RATE), RATE, int(RATE * size.rate_seconds)),
            ):
                figures = await sender_cpu(url, mode, rate, count)
                key = f"{mode}_{label}"
                out[f"{key}_cpu_us"] = figures["cpu_us"]
                out[f"{key}_rps"] = figures["rps"]
                out[f"{key}_per_call"] = figures["per_call"]
                out[f"{key}_vs_loop"] = out["loop_cpu_us"] / figures["cpu_us"]
    return out

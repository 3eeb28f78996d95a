"""7. End to end: latency from POST /v1/messages to the SES call (the stub's receive time of the
recipient's X-Request-ID), one recipient per message, well under the rate."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.benchkit import (
    HTML,
    cluster,
    http_session,
    percentile,
    redis_server,
    ses_stub,
    start_role,
    stub_times,
)
from support.until import until

RATE = 200  # EMAIL_RATE
POSTS_PER_SECOND = 50


@dataclass(frozen=True)
class Size:
    messages: int


async def run_once(size: Size) -> dict[str, float]:
    with (
        ses_stub(record_rids=True) as url,
        redis_server() as server,
        cluster(server.url, SES_ENDPOINT_URL=url, EMAIL_RATE=str(RATE)) as c,
    ):
        await start_role(c, "ingest")
        await start_role(c, "sender")
        posted: dict[str, float] = {}
        async with http_session() as session:
            endpoint = f"{c.url('ingest')}/v1/messages"

            async def post(n: int) -> None:
                body = {
                    "messages": [
                        {
                            "topic_id": "e2e",
                            "emails": [f"e2e{n}@example.com"],
                            "subject": "Hello",
                            "content": HTML,
                        }
                    ]
                }
                sent_at = time.time()
                async with session.post(endpoint, json=body) as resp:
                    answer = await resp.json()
                    if resp.status != 202:
                        raise RuntimeError(f"POST answered {resp.status}: {answer}")
                posted[f"{answer['messages'][0]['id']}_0"] = sent_at

            await post(-1)  # warm up connections, caches and the tracking secret
            tasks = []
            for n in range(size.messages):
                tasks.append(asyncio.create_task(post(n)))
                await asyncio.sleep(1 / POSTS_PER_SECOND)
            await asyncio.gather(*tasks)

            async def all_seen() -> dict[str, float]:
                rids: dict[str, float] = (await stub_times(session, url))["rids"]
                return rids if all(rid in rids for rid in posted) else {}

            seen = await until(all_seen, what="every message at the stub", within=60, every=0.2)
    latencies = [(seen[rid] - at) * 1000 for rid, at in posted.items() if rid.endswith("_0")]
    warm = latencies[1:] if len(latencies) > 1 else latencies
    return {"e2e_p50_ms": percentile(warm, 50), "e2e_p99_ms": percentile(warm, 99)}

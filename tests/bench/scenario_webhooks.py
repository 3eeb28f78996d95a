"""Webhooks: signed deliveries per second from a stats process to a local receiver.

The bench XADDs `events` entries (one `delivered` event each) and the stats process fans them
out and delivers them to one endpoint, a receiver in the bench's own process that answers 200 at
once and verifies one delivery in 100 with `standardwebhooks` (verifying every one would measure
the receiver). The figures: deliveries/s from the first XADD until the receiver has them all, and
the stats process's CPU (user + system, from /proc) per delivery over that time, which the
machine's noise moves much less than the rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from sesflow.cli.embedded import free_port
from sesflow.common.keys import Keys
from sesflow.common.schema import Event, event_fields

from bench.benchkit import (
    cluster,
    cpu_seconds,
    http_session,
    redis_client,
    redis_server,
    start_role,
)
from support.until import until


@dataclass(frozen=True)
class Size:
    deliveries: int


class CountingReceiver:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.secret = ""
        self.verified = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(self.ids) % 100 == 0:
            Webhook(self.secret).verify(body, dict(request.headers))
            self.verified += 1
        self.ids.add(request.headers["webhook-id"])
        return web.Response(status=200)


async def add_events(client: Any, count: int) -> None:
    stream = Keys().partition(0).events
    now = int(time.time() * 1000)
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + 1000, count)):
            event = Event(type="delivered", ts=now, topic="bench", msg_id=f"{now}-0", index=n)
            pipe.xadd(stream, event_fields(event))
        await pipe.execute()


async def run_once(size: Size) -> dict[str, Any]:
    receiver = CountingReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with (
            redis_server() as server,
            cluster(server.url, WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_CONCURRENCY="64") as c,
        ):
            stats = await start_role(c, "stats")
            assert stats.proc is not None
            pid = stats.proc.pid
            async with redis_client(server.url) as client, http_session(4) as session:
                body = {"url": f"http://127.0.0.1:{port}/hook", "events": ["*"]}
                async with session.post(f"{c.url('stats')}/v1/webhooks", json=body) as res:
                    assert res.status == 201, await res.text()
                    receiver.secret = (await res.json())["secret"]
                start = time.perf_counter()
                cpu_start = cpu_seconds(pid)
                await add_events(client, size.deliveries)

                async def received() -> int:
                    return len(receiver.ids)

                await until(
                    received,
                    lambda n: n >= size.deliveries,
                    what="every webhook",
                    within=600,
                    every=0.01,
                )
                elapsed = time.perf_counter() - start
                cpu = cpu_seconds(pid) - cpu_start
    finally:
        await runner.cleanup()
    return {
        "webhook_deliveries_per_s": size.deliveries / elapsed,
        "webhook_seconds": elapsed,
        "webhook_cpu_us": cpu / size.deliveries * 1e6,
        "webhook_verified": receiver.verified,
    }

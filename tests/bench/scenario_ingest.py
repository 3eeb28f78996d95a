"""1. Ingest: recipients per second accepted by one ingest process over HTTP (bulk messages of
1,000 recipients), and by a Python producer XADDing directly; each also until the dispatcher has
queued every job (in the topic's backlog, where the senders' pump takes them from)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec

from sesflow.common.keys import Keys
from sesflow.common.producer import enqueue

from bench.benchkit import (
    HTML,
    cluster,
    emails,
    http_session,
    message,
    queued_jobs,
    redis_client,
    redis_server,
    start_role,
)
from support.until import until

PER_MESSAGE = 1000
CLIENTS = 8  # concurrent HTTP posters


@dataclass(frozen=True)
class Size:
    messages: int


def bodies(count: int) -> list[bytes]:
    return [
        msgspec.json.encode(
            {
                "messages": [
                    {
                        "topic_id": "bench",
                        "emails": emails(n, PER_MESSAGE),
                        "subject": f"Bench {n}",
                        "content": HTML,
                    }
                ]
            }
        )
        for n in range(count)
    ]


async def over_http(size: Size) -> dict[str, float]:
    payloads = bodies(size.messages)
    total = size.messages * PER_MESSAGE
    with redis_server() as server, cluster(server.url) as c:
        await start_role(c, "ingest")
        async with redis_client(server.url) as client, http_session(CLIENTS) as session:
            url = f"{c.url('ingest')}/v1/messages"
            queue = list(payloads)

            async def poster() -> None:
                while queue:
                    body = queue.pop()
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        if resp.status != 202:
                            raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")
                        await resp.read()

            # warm up the connections and the process (not counted: a fresh server each run)
            await poster_once(session, url, bodies(1)[0])
            await until(lambda: at_least(client, PER_MESSAGE), what="warm-up dispatch", within=30)
            start = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(CLIENTS)))
            accepted = time.perf_counter()
            await until(
                lambda: at_least(client, total + PER_MESSAGE),
                what="jobs queued",
                within=300,
                every=0.01,
            )
            queued = time.perf_counter()
    return {
        "http_accept_rps": total / (accepted - start),
        "http_queued_rps": total / (queued - start),
    }


async def poster_once(session: object, url: str, body: bytes) -> None:
    async with session.post(  # type: ignore[attr-defined]
        url, data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")


async def at_least(client: object, count: int) -> bool:
    return await queued_jobs(client) >= count


async def by_producer(size: Size) -> dict[str, float]:
    total = size.messages * PER_MESSAGE
    requests = [message(n, PER_MESSAGE) for n in range(size.messages)]
    with redis_server() as server, cluster(server.url) as c:
        await start_role(c, "ingest")
        async with redis_client(server.url) as client:
            keys = Keys()
            start = time.perf_counter()
            for request in requests:
                await enqueue(client, keys, request)
            added = time.perf_counter()
            await until(lambda: at_least(client, total), what="jobs queued", within=300, every=0.01)
            queued = time.perf_counter()
    return {
        "producer_xadd_rps": total / (added - start),
        "producer_queued_rps": total / (queued - start),
    }


async def run_once(size: Size) -> dict[str, float]:
    return {**(await over_http(size)), **(await by_producer(size))}

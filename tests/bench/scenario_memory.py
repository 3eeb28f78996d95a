"""6. Memory: Redis memory per queued recipient with 1M recipients queued across 100 messages
(10,000 each, ~4 KB of HTML stored once per message): INFO used_memory after everything is
queued (in the topic's backlog, no sender pumping), minus before, divided by the recipients.
The `requests` stream still holds the raw messages then (the dispatcher trims it every 30 s);
that share is reported separately.

Then the memory a finished campaign keeps (`bench.retained_memory`): 100k recipients sent,
delivery feedback for half of them and a first open for a fifth, every event consumed and the
streams trimmed; once with SES feedback as identity notifications (SES-id links written), once
as configuration-set events carrying the tag (no links)."""

from __future__ import annotations

from dataclasses import dataclass

from sesflow.common.keys import Keys
from sesflow.common.producer import enqueue

from bench.benchkit import (
    cluster,
    message,
    queued_jobs,
    redis_client,
    redis_server,
    start_role,
)
from bench.retained_memory import measure
from support.until import until


@dataclass(frozen=True)
class Size:
    messages: int
    per_message: int
    retained: int = 100_000  # recipients of the finished campaign


async def used_memory(client: object) -> int:
    return int((await client.info("memory"))["used_memory"])  # type: ignore[attr-defined]


async def topics(client: object) -> list[str]:
    part = Keys().partition(0)
    names: list[str] = await client.zrange(part.backlog_topics, 0, -1)  # type: ignore[attr-defined]
    return names


async def run_once(size: Size) -> dict[str, float]:
    total = size.messages * size.per_message
    keys = Keys()
    part = keys.partition(0)
    with redis_server() as server, cluster(server.url) as c:
        await start_role(c, "ingest")
        async with redis_client(server.url) as client:
            await until(lambda: client.exists(keys.requests), what="the dispatch group", within=30)
            before = await used_memory(client)
            for n in range(size.messages):
                await enqueue(client, keys, message(n, size.per_message))

            async def queued() -> bool:
                return await queued_jobs(client) >= total

            await until(queued, what="jobs queued", within=600, every=0.1)
            after = await used_memory(client)
            requests = int(await client.memory_usage(keys.requests, samples=0) or 0)
            # jobs wait in their topic's backlog until a sender's pump moves them to `sends`
            sends = 0
            for key in (part.sends, *(part.backlog(t) for t in await topics(client))):
                sends += int(await client.memory_usage(key, samples=0) or 0)
    retained = {}
    for name, tagged in (("retained_bytes_per_recipient", False), ("retained_tagged", True)):
        with redis_server() as server:
            async with redis_client(server.url) as client:
                per_message = min(10_000, size.retained)
                retained[name] = await measure(client, size.retained, per_message, tagged=tagged)
    return {
        **retained,
        "bytes_per_recipient": (after - before) / total,
        "bytes_per_recipient_trimmed": (after - before - requests) / total,
        "sends_bytes_per_recipient": sends / total,
    }

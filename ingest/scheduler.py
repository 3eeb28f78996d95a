"""The scheduler: every `TICK` seconds, per partition, `promote.lua` moves due chunks of the
schedule into `sends`. Each call moves at most `BATCH` chunks (ZRANGEBYSCORE ... LIMIT, so nothing
scans the whole schedule); a full batch means more may be due, so it calls again at once. Several
ingest processes may run it side by side: the script is atomic, a chunk moves once."""

from __future__ import annotations

import asyncio

from sesflow.common import scripts
from sesflow.common.connection import UNAVAILABLE, Redis, wait_for_redis
from sesflow.common.consumer import sleep_or_stop
from sesflow.common.errors import RedisUnavailable
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.ingest import metrics

log = get_logger(__name__)

TICK = 0.2  # seconds: a due chunk waits at most this long (plus one call)
BATCH = 20  # chunks per call: <= 10,000 jobs, a few milliseconds of Redis time


class Scheduler:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.script = scripts.register(client, "promote")

    async def promote(self, p: PartitionKeys, batch: int = BATCH) -> int:
        """Move every chunk of partition `p` that is due now; returns the jobs queued."""
        jobs = 0
        while True:
            chunks, added = await self.script(keys=p.promote_keys(), args=[batch, p.prefix])
            jobs += int(added)
            metrics.SCHEDULER_CHUNKS.inc(int(chunks))
            metrics.SCHEDULER_JOBS.inc(int(added))
            if int(chunks) < batch:
                return jobs
            await asyncio.sleep(0)  # let the API and the dispatcher in between batches

    async def tick(self) -> int:
        jobs = 0
        for p in self.keys.partitions:
            jobs += await self.promote(p)
        if jobs:
            log.info("promoted scheduled jobs", jobs=jobs)
        return jobs

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except (*UNAVAILABLE, RedisUnavailable) as exc:
                log.warning("scheduler: redis unavailable", error=str(exc))
                await wait_for_redis(self.client, stop, log)
            except Exception:
                log.exception("scheduler tick failed")
            await sleep_or_stop(stop, TICK)

"""Parked jobs: the jobs of a paused SES setup scope (`sender.setup_faults`: a configuration set
SES paused, a paused tenant, a broken identity), kept aside in Redis so that they hold neither a
sender's concurrency slot nor a place in the pump's depth while they wait. Without this, a
paused configuration set's campaign would fill every slot and every pump round with jobs that
cannot go, and the other messages would stop with it.

- one job per paused scope waits in each replica (`wait_here`): it is the scope's probe, as
  before parking existed; every other job of the scope is parked (`park.lua`: acknowledged on
  `sends` and its backlog line appended to `{p}:parked:<scope>`, in one step). Its delivery
  state stays queued: parking claims nothing, so exactly-once rests on the claim and the record
  as for any job;
- a scope's parked jobs go back to their backlogs (`unpark.lua`, in chunks) when a probe lifts
  its pause, and on every replica's setup refresh (each second) for any scope with parked jobs
  that is no longer paused (lifted elsewhere, dropped as stale, or parked by a replica whose
  view was a moment old). The pump then meters them like any other backlog: nothing is lost,
  and nothing is sent twice (a line whose job is already final is only acknowledged again).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from sesflow.common import scripts
from sesflow.common.connection import Redis
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.schema import Job
from sesflow.sender import metrics

log = get_logger(__name__)

UNPARK_CHUNK = 1000  # jobs per unpark.lua call: a few milliseconds each


def backlog_line(job: Job) -> str:
    """The job as dispatch.lua writes it to a backlog (pump.lua reads it back)."""
    line = f"{job.msg_id}\t{job.index}\t{job.email}"
    return f"{line}\t{job.data}" if job.data else line


class Parking:
    def __init__(self, client: Redis, keys: Keys, consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.park_script = scripts.register(client, "park")
        self.unpark_script = scripts.register(client, "unpark")
        self.waiting: dict[str, str] = {}  # scope -> the entry waiting here to probe it

    def wait_here(self, scope: str, entry_id: str) -> bool:
        """True when this entry is (now) the one job of this replica that waits for `scope`."""
        return self.waiting.setdefault(scope, entry_id) == entry_id

    def done_waiting(self, scope: str, entry_id: str) -> None:
        if self.waiting.get(scope) == entry_id:
            del self.waiting[scope]

    async def park(self, part: PartitionKeys, entry_id: str, job: Job, scope: str) -> bool:
        """Park a job that holds no claim; False when its entry is not pending for this
        consumer any more (another replica took it over)."""
        parked = await self.park_script(
            keys=part.park_keys(scope),
            args=[SENDERS_GROUP, self.consumer, entry_id, scope, backlog_line(job)],
        )
        return bool(parked)

    async def unpark(self, scope: str) -> int:
        """Every parked job of `scope` back to its backlog; how many."""
        moved = 0
        for part in self.keys.partitions:
            while True:
                done, left = await self.unpark_script(
                    keys=part.unpark_keys(scope), args=[scope, UNPARK_CHUNK, part.prefix]
                )
                moved += int(done)
                if not int(left):
                    break
        if moved:
            log.info("parked jobs back in their backlogs", scope=scope, jobs=moved)
        return moved

    async def unpark_lifted(self, paused: Collection[str]) -> None:
        """Unpark every scope with parked jobs that is not in `paused`; set the gauge of the
        jobs still parked, per scope."""
        counts: dict[str, int] = {}
        for part in self.keys.partitions:
            scopes = cast(set[str], await self.client.smembers(part.parked_scopes))
            for scope in scopes:
                if scope not in paused:
                    await self.unpark(scope)
                else:
                    held = int(await self.client.llen(part.parked(scope)))
                    counts[scope] = counts.get(scope, 0) + held
        metrics.SETUP_PARKED.clear()
        for scope, held in counts.items():
            metrics.SETUP_PARKED.labels(scope).set(held)

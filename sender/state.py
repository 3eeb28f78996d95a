"""Per-recipient delivery state (`p.state(msg_id)`, field = index) and the scripts that move it.

    absent (queued) --claim--> i:<ms>:<consumer> --record--> s:<ses id> | f:<reason> | u
          |                          |
          |                          +--release--> absent (SES did not take it: retry later)
          +--record--> x | p | f:<reason> | u   (decided without calling SES)

Every final write goes with its event on `p.events` and the XACK of the `sends` entry in one
script (`record.lua`), so a redelivered entry either finds the final state (and is only acked)
or finds nothing written at all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from common.keys import SENDERS_GROUP, Keys, PartitionKeys
from common.schema import Event, Job, encode
from common.scripts import register
from common.suppression import normalise

SENT = "s:"
FAILED = "f:"
STOPPED = "x"
SUPPRESSED = "p"
UNKNOWN = "u"
INFLIGHT = "i:"


def is_final(state: str | None) -> bool:
    return bool(state) and not str(state).startswith(INFLIGHT)


def is_inflight(state: str | None) -> bool:
    return bool(state) and str(state).startswith(INFLIGHT)


@dataclass(frozen=True, slots=True)
class Precheck:
    """What one pipelined round trip says about a job before spending a rate token."""

    state: str  # "" = queued
    stop_ms: int | None  # the topic's cancel time, if it was ever cancelled
    suppressed: bool

    def stopped(self, accepted_ms: int) -> bool:
        return self.stop_ms is not None and self.stop_ms >= accepted_ms


@dataclass(frozen=True, slots=True)
class Outcome:
    """A script's answer: status ok | final | busy | stopped, and the state (or stop time)."""

    status: str
    value: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _outcome(reply: Any) -> Outcome:
    status, value = reply[0], reply[1] if len(reply) > 1 else ""
    return Outcome(str(status), "" if value is None else str(value))


def now_ms() -> int:
    return int(time.time() * 1000)


class ClaimValues:
    """`i:<ms>:<consumer>`, strictly increasing within this process so that two attempts (or two
    duplicate entries of one job) never share a claim value, which is what makes a retried
    claim idempotent and a foreign one distinguishable."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._last = 0

    def next(self) -> str:
        ms = max(now_ms(), self._last + 1)
        self._last = ms
        return f"{INFLIGHT}{ms}:{self.consumer}"


class DeliveryStore:
    """The Redis side of one job's life: pre-check, claim, release, record, dead letters."""

    def __init__(self, client: Any, keys: Keys, state_ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.state_ttl = state_ttl
        self._claim = register(client, "claim")
        self._release = register(client, "release")
        self._record = register(client, "record")
        # redis-py refuses EVALSHA in a RedisCluster pipeline (it cannot route it).
        self._cluster = isinstance(client, RedisCluster)

    async def precheck(self, part: PartitionKeys, job: Job, topic: str | None) -> Precheck:
        """State, the topic's stop time and suppression in one round trip (no transaction: the
        suppression hash lives in another slot)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(part.state(job.msg_id), str(job.index))
        pipe.get(part.stop(topic or ""))
        pipe.hexists(self.keys.suppressed, normalise(job.email))
        state, stop, suppressed = await pipe.execute()
        stop_ms = int(stop) if stop is not None and str(stop).isdigit() else None
        return Precheck(state=state or "", stop_ms=stop_ms, suppressed=bool(suppressed))

    async def claim(
        self, part: PartitionKeys, job: Job, topic: str, value: str, accepted: int, takeover: str
    ) -> Outcome:
        reply = await self._claim(
            keys=[part.state(job.msg_id), part.stop(topic)],
            args=[job.index, value, accepted, takeover],
        )
        return _outcome(reply)

    async def release(self, part: PartitionKeys, job: Job, value: str) -> bool:
        reply = await self._release(keys=[part.state(job.msg_id)], args=[job.index, value])
        return bool(int(reply))

    def _record_args(
        self,
        part: PartitionKeys,
        entry_id: str,
        job: Job | None,
        expected: str,
        final: str,
        event: Event | None,
        dead: dict[str, str] | None,
    ) -> tuple[list[str], list[Any]]:
        keys = [
            part.state(job.msg_id) if job else part.state(""),
            part.events,
            part.sends,
            part.sends_dead,
        ]
        args: list[Any] = [
            str(job.index) if job else "",
            expected,
            final,
            encode(event) if event else "",
            SENDERS_GROUP,
            entry_id,
            self.state_ttl,
        ]
        for name, value in (dead or {}).items():
            args += [name, value]
        return keys, args

    async def record(
        self,
        part: PartitionKeys,
        entry_id: str,
        job: Job | None,
        *,
        expected: str = "",
        final: str = "",
        event: Event | None = None,
        dead: dict[str, str] | None = None,
        ses_link: tuple[str, str] | None = None,
    ) -> Outcome:
        """Write the final state + event (+ dead letter) and XACK, atomically. `ses_link`
        (ses id, request id) is written in the same round trip but outside the script: that key
        has no hash tag (it is found by SES id alone), and it is only a correlation aid."""
        keys, args = self._record_args(part, entry_id, job, expected, final, event, dead)
        if ses_link is None:
            return _outcome(await self._record(keys=keys, args=args))
        # EVALSHA queued by hand: a script registered on a pipeline makes redis-py send SCRIPT
        # EXISTS before every execute, one more round trip per sent email (~8% of the sender's
        # CPU). When Redis does not know the script (first use, restart), the script runs
        # again on its own, loading it; it is idempotent, and the SET is harmless to repeat.
        ses_id, rid = ses_link
        if self._cluster:
            # The link key lives on another slot, so another node: two calls, at once.
            reply, _ = await asyncio.gather(
                self._record(keys=keys, args=args),
                self.client.set(self.keys.ses_message(ses_id), rid, ex=self.state_ttl),
            )
            return _outcome(reply)
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self._record.sha, len(keys), *keys, *args)
        pipe.set(self.keys.ses_message(ses_id), rid, ex=self.state_ttl)
        try:
            reply, _ = await pipe.execute()
        except NoScriptError:
            reply = await self._record(keys=keys, args=args)
        return _outcome(reply)

    async def dead_letter(
        self, part: PartitionKeys, entry_id: str, fields: dict[str, str], reason: str
    ) -> None:
        """A `sends` entry that is not a job: keep it with the reason, XACK it."""
        await self.record(part, entry_id, None, dead=dead_entry(entry_id, fields, reason))

    async def ack(self, part: PartitionKeys, entry_id: str) -> None:
        await self.client.xack(part.sends, SENDERS_GROUP, entry_id)


def dead_entry(entry_id: str, fields: dict[str, str] | None, reason: str) -> dict[str, str]:
    """A dead letter on `p.sends_dead`: the original fields (so it can be replayed as is), plus
    `reason`, `source_id` (the entry id on `sends`) and `ts` (ms). Original fields never clash with
    these because a job's fields are `m`, `i`, `e`."""
    entry = {str(k): str(v) for k, v in (fields or {}).items()}
    entry.update({"reason": reason, "source_id": entry_id, "ts": str(now_ms())})
    return entry

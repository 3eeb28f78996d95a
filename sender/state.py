"""Per-recipient delivery state and the scripts that move it.

    absent (queued) --claim--> i:<ms>:<consumer> --record--> s | f | u
          |                          |
          |                          +--release--> absent (SES did not take it: retry later)
          +--record--> x | p | f | u   (decided without calling SES)

A final state is one byte at the recipient's index in the message's final string
(`p.finals(msg_id)`, SETRANGE/GETRANGE; 0 = not final); an in-flight claim is a field of the
message's state hash (`p.state(msg_id)`, field = index) only while it is in flight, so a
finished message costs Redis about a byte per recipient. The SES MessageId and the failure
reason travel with the event (and the archive), not in the state. A state hash field that is
not a claim is a final state written by an older version: read as final, never rewritten.

Every final write goes with its event on `p.events` and the XACK of the `sends` entry in one
script (`record.lua`), so a redelivered entry either finds the final state (and is only acked)
or finds nothing written at all. Jobs of one partition that reach the same step together are
pre-checked, claimed and recorded in one round trip; every job is still decided on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Iterator
from enum import StrEnum
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.lean_redis import pipeline_for
from sesflow.common.schema import Event, EventType, Job, encode
from sesflow.common.scripts import register
from sesflow.common.ses_links import link_calls
from sesflow.common.streams import DEAD_LETTER_MAXLEN
from sesflow.common.suppression import leaves, normalise
from sesflow.sender.batching import Batcher
from sesflow.sender.ses_links import LinkPolicy

# One JSON argument per script call carries every job's values (see claim.lua, record.lua).
_json = msgspec.json.Encoder()

# A pre-check's question: the job, its topic, and the list whose unsubscribes stop it ("" none).
PrecheckAsk = tuple[PartitionKeys, Job, str | None, str]

INFLIGHT = "i:"  # the one prefix claim.lua reads itself: any other stored value is final


class Kind(StrEnum):
    QUEUED = "queued"
    INFLIGHT = "inflight"
    SENT = "sent"
    FAILED = "failed"
    STOPPED = "stopped"
    SUPPRESSED = "suppressed"
    UNKNOWN = "unknown"


# The byte each final state is stored as in a final string (record.lua writes it as given).
_LETTER = {
    Kind.SENT: "s",
    Kind.FAILED: "f",
    Kind.STOPPED: "x",
    Kind.SUPPRESSED: "p",
    Kind.UNKNOWN: "u",
}
# The prefixes of the hash values with a value: a claim, and the final states older versions
# wrote with their SES id or failure reason.
_PREFIX = {Kind.SENT: "s:", Kind.FAILED: "f:", Kind.INFLIGHT: INFLIGHT}
_BY_LETTER = {code: kind for kind, code in _LETTER.items()}
NOT_FINAL = "\0"  # a final string's byte for a recipient with no final state (SETRANGE pads)
_BY_PREFIX = {code: kind for kind, code in _PREFIX.items()}
# The event each final state is recorded with.
_EVENT = {
    Kind.SENT: EventType.SENT,
    Kind.FAILED: EventType.FAILED,
    Kind.STOPPED: EventType.STOPPED,
    Kind.SUPPRESSED: EventType.SUPPRESSED,
    Kind.UNKNOWN: EventType.UNKNOWN,
}


# The values the sender makes per recipient are frozen msgspec Structs, not frozen dataclasses:
# a frozen dataclass's __init__ sets each field through object.__setattr__ (about 2 us for six
# fields, against 0.15 us), and a recipient makes several. gc=False where no field can hold a
# reference cycle.
class DeliveryState(msgspec.Struct, frozen=True, gc=False):
    """One recipient's delivery state. Stored (Lua scripts read and write the same bytes):

        queued     absent from both, or byte 0 in the final string
        inflight   i:<ms>:<consumer>   state hash field: claimed at <ms> by <consumer>; the
                                       ambiguous window (kept only while in flight)
        sent       s                   final string byte (`code`); older versions: s:<ses id>
        failed     f                   final string byte; older versions: f:<reason>
        stopped    x
        suppressed p
        unknown    u                   its sender died (or SES did not answer) mid-call

    `value` is the SES id, the failure reason (known to the process that decided it, and on the
    event; a state read back from a final string has none) or, for inflight, the consumer.
    A stored value of no known form is final (as claim.lua and record.lua treat it) and kept as
    it is (`text`)."""

    kind: Kind
    value: str = ""
    ms: int = 0  # inflight: when the claim was stored
    text: str | None = None  # the stored value when it is of no canonical form

    # --- the states -----------------------------------------------------------------------

    @staticmethod
    def inflight(ms: int, consumer: str) -> DeliveryState:
        return DeliveryState(Kind.INFLIGHT, consumer, ms)

    @staticmethod
    def sent(ses_id: str) -> DeliveryState:
        return DeliveryState(Kind.SENT, ses_id)

    @staticmethod
    def failed(reason: str) -> DeliveryState:
        return DeliveryState(Kind.FAILED, reason)

    # --- the stored text ------------------------------------------------------------------

    @property
    def code(self) -> str:
        """The byte a final state is stored as in the message's final string."""
        return _LETTER.get(self.kind, _LETTER[Kind.UNKNOWN])

    def encode(self) -> str:
        if self.text is not None:
            return self.text
        if self.kind is Kind.QUEUED:
            return ""
        if self.kind is Kind.INFLIGHT:
            return f"{INFLIGHT}{self.ms}:{self.value}"
        if self.kind in _PREFIX and self.value:
            return _PREFIX[self.kind] + self.value
        return _LETTER[self.kind]

    @staticmethod
    def parse(stored: str | None) -> DeliveryState:
        """The state of a stored value: a final string's byte or a state hash field (None, ""
        = queued; a final string's byte 0 is filtered out before); `parse(s).encode() == s`."""
        if not stored:
            return QUEUED
        letter = _BY_LETTER.get(stored)
        if letter is not None:
            return _SIMPLE[letter]
        kind = _BY_PREFIX.get(stored[:2])
        if kind is Kind.INFLIGHT:
            return _parse_claim(stored)
        if kind is not None:
            return DeliveryState(kind, stored[2:], text=None if stored[2:] else stored)
        return _odd(stored)

    # --- what it means --------------------------------------------------------------------

    @property
    def queued(self) -> bool:
        return self.kind is Kind.QUEUED

    @property
    def is_inflight(self) -> bool:
        return self.kind is Kind.INFLIGHT

    @property
    def final(self) -> bool:
        return self.kind not in (Kind.QUEUED, Kind.INFLIGHT)

    @property
    def event(self) -> EventType:
        """The event a final state is recorded with."""
        return _EVENT[self.kind]

    def claim_age_ms(self, now: int) -> int:
        """How old an inflight claim is; one whose time cannot be read counts as ancient."""
        return now - self.ms


QUEUED = DeliveryState(Kind.QUEUED)
STOPPED = DeliveryState(Kind.STOPPED)
SUPPRESSED = DeliveryState(Kind.SUPPRESSED)
UNKNOWN = DeliveryState(Kind.UNKNOWN)
_SIMPLE = {
    Kind.SENT: DeliveryState(Kind.SENT),
    Kind.FAILED: DeliveryState(Kind.FAILED),
    Kind.STOPPED: STOPPED,
    Kind.SUPPRESSED: SUPPRESSED,
    Kind.UNKNOWN: UNKNOWN,
}


def _parse_claim(stored: str) -> DeliveryState:
    ms, sep, consumer = stored[len(INFLIGHT) :].partition(":")
    if sep and ms.isdigit() and str(int(ms)) == ms:
        return DeliveryState(Kind.INFLIGHT, consumer, int(ms))
    return DeliveryState(Kind.INFLIGHT, stored[len(INFLIGHT) :], 0, text=stored)


def _odd(stored: str) -> DeliveryState:
    """A value written by nothing sesflow runs now: final, of no kind we can name."""
    return DeliveryState(Kind.UNKNOWN, text=stored)


class Precheck(msgspec.Struct, frozen=True, gc=False):
    """What one pipelined round trip says about a job before spending a rate token."""

    state: DeliveryState
    stop_ms: int | None  # the topic's cancel time, if it was ever cancelled
    suppressed: bool

    def stopped(self, accepted_ms: int) -> bool:
        return self.stop_ms is not None and self.stop_ms >= accepted_ms


class Outcome(msgspec.Struct, frozen=True, gc=False):
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

    def next(self) -> DeliveryState:
        ms = max(now_ms(), self._last + 1)
        self._last = ms
        return DeliveryState.inflight(ms, self.consumer)


class ClaimItem(msgspec.Struct, frozen=True):
    part: PartitionKeys
    job: Job
    topic: str
    value: DeliveryState  # our claim (inflight)
    accepted: int
    takeover: DeliveryState  # the dead sender's claim it may replace, or QUEUED


class RecordItem(msgspec.Struct, frozen=True):
    part: PartitionKeys
    entry_id: str
    job: Job | None  # None: an entry that is not a job (only its dead letter and XACK)
    expected: DeliveryState = QUEUED  # QUEUED, or the exact claim stored now
    final: DeliveryState = QUEUED
    event: Event | None = None
    dead: dict[str, str] | None = None  # a dead letter written with it
    ses_link: tuple[str, str] | None = None  # (SES id, request id)


SPAN_GAP = 1024  # indexes further apart than this are read with separate GETRANGEs


def _spans(indexes: list[int]) -> list[tuple[int, int]]:
    """Inclusive (low, high) ranges covering `indexes`, split where they are far apart."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indexes)):
        if out and i - out[-1][1] <= SPAN_GAP:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _text(value: Any) -> str:
    """A reply as text whether the client decodes replies or not (bytes 0..127 only here)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value or "")


def _read_states(
    pipe: Any, messages: dict[str, list[int]], parts: dict[str, PartitionKeys]
) -> list[tuple[str, int, int]]:
    """Queue on `pipe` the reads of these recipients' states: one HMGET of each message's
    claims, then one GETRANGE per span of its final bytes; returns the spans, in order."""
    spans: list[tuple[str, int, int]] = []
    for msg_id, indexes in messages.items():
        pipe.hmget(parts[msg_id].state(msg_id), [str(i) for i in indexes])
    for msg_id, indexes in messages.items():
        for low, high in _spans(indexes):
            spans.append((msg_id, low, high))
            pipe.getrange(parts[msg_id].finals(msg_id), low, high)
    return spans


def _states_read(
    replies: Iterator[Any], messages: dict[str, list[int]], spans: list[tuple[str, int, int]]
) -> dict[tuple[str, int], DeliveryState]:
    """The replies `_read_states` queued, taken from `replies`: each recipient's state, the
    final byte first (a claim hash field of an older version may still hold a final value)."""
    held: dict[tuple[str, int], str | None] = {}
    for msg_id, indexes in messages.items():
        held.update(((msg_id, i), v) for i, v in zip(indexes, next(replies), strict=True))
    done: dict[tuple[str, int], str] = {}
    for msg_id, low, _ in spans:
        chunk = _text(next(replies))
        done.update(((msg_id, low + n), byte) for n, byte in enumerate(chunk))
    states: dict[tuple[str, int], DeliveryState] = {}
    for recipient, claim in held.items():
        byte = done.get(recipient)
        final = DeliveryState.parse(None if byte == NOT_FINAL else byte)
        states[recipient] = final if final.final else DeliveryState.parse(claim)
    return states


async def recipient_states(client: Any, part: PartitionKeys, msg_id: str) -> dict[int, str]:
    """Every stored state of a message, index -> stored text (a final byte, a claim, or an
    older version's value): what an operator, the CLI or a test reads."""
    claims = await client.hgetall(part.state(msg_id))
    finals = _text(await client.get(part.finals(msg_id)))
    out = {int(k): _text(v) for k, v in claims.items()}
    out.update((i, byte) for i, byte in enumerate(finals) if byte != NOT_FINAL)
    return out


async def recipient_state(client: Any, part: PartitionKeys, msg_id: str, index: int) -> str:
    """One recipient's stored state ("" = none): its final byte, else its state hash field."""
    byte = _text(await client.getrange(part.finals(msg_id), index, index))
    if byte and byte != NOT_FINAL:
        return byte
    return _text(await client.hget(part.state(msg_id), str(index)))


def _pairs(reply: Any) -> list[Outcome]:
    return [_outcome(reply[n : n + 2]) for n in range(0, len(reply), 2)]


class DeliveryStore:
    """The Redis side of one job's life: pre-check, claim, release, record, dead letters.

    Pre-checks, claims and records of jobs that get there together go to Redis in one round
    trip (`sender.batching`); each job still gets its own answer, decided as if alone."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        state_ttl: int,
        dead_maxlen: int = DEAD_LETTER_MAXLEN,
        links: LinkPolicy | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.state_ttl = state_ttl
        self.links = links or LinkPolicy(client, keys, "always")
        self.dead_maxlen = dead_maxlen
        self._claim = register(client, "claim")
        self._release = register(client, "release")
        self._record = register(client, "record")
        self._links = register(client, "ses_links")
        # redis-py refuses EVALSHA in a RedisCluster pipeline (it cannot route it).
        self._cluster = isinstance(client, RedisCluster)
        self._prechecks: Batcher[PrecheckAsk, Precheck] = Batcher(
            self._precheck_many, skip_cancelled=True
        )
        self._claims: Batcher[ClaimItem, Outcome] = Batcher(self._claim_many, skip_cancelled=True)
        self._records: Batcher[RecordItem, Outcome] = Batcher(
            self._record_many, skip_cancelled=False
        )

    async def precheck(
        self, part: PartitionKeys, job: Job, topic: str | None, scope: str = ""
    ) -> Precheck:
        """State, the topic's stop time and suppression (global, and the unsubscribes of list
        `scope` when it is bulk mail's), in one pipelined round trip with the other jobs
        pre-checked at the same moment."""
        return await self._prechecks.submit(None, (part, job, topic, scope))

    async def _precheck_many(self, _: Hashable, items: list[PrecheckAsk]) -> list[Precheck]:
        # A batch is mostly jobs of one message: per message one HMGET of its claims and one
        # GETRANGE over its final bytes, one GET per topic, one HMGET of the suppression hash
        # for all addresses and, when some job is bulk mail, one HMGET of the list unsubscribes
        # for those, instead of three or four commands per job (redis-py spends ~20 us of CPU
        # per command). No transaction: the suppression hashes live in another slot.
        messages: dict[str, list[int]] = {}
        parts: dict[str, PartitionKeys] = {}
        stops: dict[str, None] = {}
        for part, job, topic, _scope in items:
            messages.setdefault(job.msg_id, []).append(job.index)
            parts[job.msg_id] = part
            stops[part.stop(topic or "")] = None
        addresses = [normalise(job.email) for _, job, _, _ in items]
        scoped = [n for n, (_, _, _, scope) in enumerate(items) if scope]
        pipe = pipeline_for(self.client)
        spans = _read_states(pipe, messages, parts)
        for key in stops:
            pipe.get(key)
        pipe.hmget(self.keys.suppressed, addresses)
        if scoped:
            pipe.hmget(self.keys.unsubscribed, [addresses[n] for n in scoped])
        replies = iter(await pipe.execute())
        state_of = _states_read(replies, messages, spans)
        stop_of = {stop_key: next(replies) for stop_key in stops}
        suppressed = next(replies)
        lists_of = dict(zip(scoped, next(replies), strict=True)) if scoped else {}
        out = []
        for n, ((part, job, topic, scope), listed) in enumerate(
            zip(items, suppressed, strict=True)
        ):
            stop = stop_of[part.stop(topic or "")]
            stop_ms = int(stop) if stop is not None and str(stop).isdigit() else None
            out.append(
                Precheck(
                    state=state_of[(job.msg_id, job.index)],
                    stop_ms=stop_ms,
                    suppressed=listed is not None or leaves(lists_of.get(n), scope),
                )
            )
        return out

    # A read batch's pre-check and a grid point's claim are grouped by their callers: one round
    # trip at once, without the batcher's task and hand-over. Records go through the batcher:
    # the SES calls of one grid point (one per job in SEND_MODE=single) end at about the same
    # time, and their records share a round trip.

    async def precheck_many(self, items: list[PrecheckAsk]) -> list[Precheck]:
        """`precheck` for several jobs (a read batch): one answer each, one round trip."""
        return await self._precheck_many(None, items) if items else []

    async def claim_many(self, part: PartitionKeys, items: list[ClaimItem]) -> list[Outcome]:
        """`claim` for several jobs of `part`: one answer each, in one script call."""
        return await self._claim_many(part.index, items) if items else []

    async def record_many(self, part: PartitionKeys, items: list[RecordItem]) -> list[Outcome]:
        """`record` for several jobs of `part`: one answer each, in one script call."""
        return await self._records.submit_many(part.index, items)

    async def claim(
        self,
        part: PartitionKeys,
        job: Job,
        topic: str,
        value: DeliveryState,
        accepted: int,
        takeover: DeliveryState,
    ) -> Outcome:
        item = ClaimItem(part, job, topic, value, accepted, takeover)
        return await self._claims.submit(part.index, item)

    async def _claim_many(self, _: Hashable, items: list[ClaimItem]) -> list[Outcome]:
        keys: dict[str, int] = {}  # each key once, with its 1-based index in KEYS
        jobs = []
        for c in items:
            state = keys.setdefault(c.part.state(c.job.msg_id), len(keys) + 1)
            final = keys.setdefault(c.part.finals(c.job.msg_id), len(keys) + 1)
            stop = keys.setdefault(c.part.stop(c.topic), len(keys) + 1)
            value, takeover = c.value.encode(), c.takeover.encode()
            jobs.append((state, final, stop, str(c.job.index), value, c.accepted, takeover))
        return _pairs(await self._claim(keys=list(keys), args=[_json.encode(jobs)]))

    async def release(self, part: PartitionKeys, job: Job, claim: DeliveryState) -> bool:
        args = [job.index, claim.encode()]
        reply = await self._release(keys=[part.state(job.msg_id)], args=args)
        return bool(int(reply))

    async def record(self, item: RecordItem) -> Outcome:
        """Write the final state + event (+ dead letter) and XACK, atomically, in one script call
        with the other results of this partition that are ready at the same moment. `ses_link`
        (ses id, request id) is written in the same round trip but outside the script: that key
        has no hash tag (it is found by SES id alone), and it is only a correlation aid."""
        return await self._records.submit(item.part.index, item)

    async def _record_many(self, _: Hashable, items: list[RecordItem]) -> list[Outcome]:
        part = items[0].part
        state_keys: dict[str, int] = {}  # each key once, with its 1-based index in KEYS
        jobs = []
        dead_values: list[str] = []
        links = []
        for r in items:
            state = final = 1
            if r.job:
                state = state_keys.setdefault(part.state(r.job.msg_id), len(state_keys) + 4)
                final = state_keys.setdefault(part.finals(r.job.msg_id), len(state_keys) + 4)
            dead = [str(x) for pair in (r.dead or {}).items() for x in pair]
            dead_values += dead
            jobs.append(
                (
                    state,
                    final,
                    str(r.job.index) if r.job else "",
                    r.expected.encode(),
                    r.final.code,
                    encode(r.event).decode() if r.event else "",
                    r.entry_id,
                    len(dead),
                )
            )
            if r.ses_link is not None:
                links.append(r.ses_link)
        keys = [part.events, part.sends, part.sends_dead, *state_keys]
        args: list[Any] = [SENDERS_GROUP, self.state_ttl, self.dead_maxlen, _json.encode(jobs)]
        args += dead_values
        if not links or not await self.links.wanted():
            return _pairs(await self._record(keys=keys, args=args))
        calls = link_calls(self.keys, links, time.time(), self.state_ttl, per_key=self._cluster)
        if self._cluster:
            # The link hashes live on other slots, so other nodes: separate calls, at once.
            replies: list[Any] = await asyncio.gather(
                self._record(keys=keys, args=args),
                *(self._links(keys=k, args=a) for k, a in calls),
            )
            return _pairs(replies[0])
        # EVALSHA queued by hand: a script registered on a pipeline makes redis-py send SCRIPT
        # EXISTS before every execute, one more round trip. A script Redis does not know (first
        # use, restart) runs again on its own, loading it; the other one's answer stands.
        [(link_keys, link_args)] = calls
        pipe = pipeline_for(self.client)
        pipe.evalsha(self._record.sha, len(keys), *keys, *args)
        pipe.evalsha(self._links.sha, len(link_keys), *link_keys, *link_args)
        reply, linked = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            reply = await self._record(keys=keys, args=args)
        if isinstance(linked, NoScriptError):
            linked = await self._links(keys=link_keys, args=link_args)
        for answer in (reply, linked):
            if isinstance(answer, Exception):
                raise answer
        return _pairs(reply)

    async def dead_letter(
        self, part: PartitionKeys, entry_id: str, fields: dict[str, str], reason: str
    ) -> None:
        """A `sends` entry that is not a job: keep it with the reason, XACK it."""
        await self.record(
            RecordItem(part, entry_id, None, dead=dead_entry(entry_id, fields, reason))
        )

    async def ack(self, part: PartitionKeys, entry_id: str) -> None:
        await self.client.xack(part.sends, SENDERS_GROUP, entry_id)


def dead_entry(entry_id: str, fields: dict[str, str] | None, reason: str) -> dict[str, str]:
    """A dead letter on `p.sends_dead`: the original fields (so it can be replayed as is), plus
    `reason`, `source_id` (the entry id on `sends`) and `ts` (ms). Original fields never clash with
    these because a job's fields are `m`, `i`, `e`."""
    entry = {str(k): str(v) for k, v in (fields or {}).items()}
    entry.update({"reason": reason, "source_id": entry_id, "ts": str(now_ms())})
    return entry

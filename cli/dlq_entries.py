"""The dead-letter streams behind `sesflow dlq`: read them, replay entries to where they came
from, purge them.

    requests  `keys.requests_dead`   original fields + reason, detail, id   (the dispatcher)
    sends     each `p.sends_dead`    job fields m, i, e + reason, source_id, ts   (the sender)
    events    each `p.events_dead`   original fields + id, reason   (stats)
    webhooks  each `p.webhooks_dead` delivery fields + id, reason, attempts, failed_at_ms
                                     (the webhook deliverer, after WEBHOOK_RETRY_FOR)

Replaying a `sends` entry undoes a final failure: the sender wrote `f:<reason>` as the
recipient's state and counted a `failed` event. In one transaction per entry (every key shares
the partition's hash tag; WATCH guards against a concurrent change) replay removes that state,
records a `requeued` event (stats takes it off `failed`, so the recipient is pending again),
queues the job on `sends` and deletes the dead letter. Replays of the other streams put the
original entry back and delete the dead letter, in one transaction too. A `webhooks` entry
goes back on its partition's delivery queue, due now with a new retry window and the same
`webhook-id` (one script: the queue and the dead letters share the partition's tag).

Entries that would only be dead-lettered again are skipped with the reason, unless `force`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import cast

import msgspec
from redis.exceptions import WatchError

from sesflow.common.connection import Entries, Redis, as_fields
from sesflow.common.errors import InputError
from sesflow.common.keys import Keys
from sesflow.common.schema import REQUEST_FIELD, Event, EventType, Job, decode_request, event_fields
from sesflow.common.settings import Settings
from sesflow.ingest.templates import stand_in
from sesflow.ingest.validation import Limits, validate_message
from sesflow.sender.state import NOT_FINAL, DeliveryState, Kind
from sesflow.stats.counters import MalformedEvent, parse_entry
from sesflow.stats.webhooks.queue import Queue

STREAMS = ("requests", "sends", "events", "webhooks")
# Fields each writer adds to the original entry.
META_FIELDS = {
    "requests": ("reason", "detail", "id"),
    "sends": ("reason", "source_id", "ts"),
    "events": ("reason", "id"),
    "webhooks": ("reason", "id", "attempts", "failed_at_ms"),
}
PAGE = 200
WATCH_ATTEMPTS = 10
STATE_NAMES = {"s": "sent", "x": "stopped", "p": "suppressed", "u": "unknown", "i": "in flight"}


@dataclass(frozen=True, slots=True)
class DeadStream:
    kind: str  # requests | sends | events | webhooks
    key: str
    partition: int | None  # None for requests (one global stream)
    origin: str  # the stream a replay writes to

    @property
    def label(self) -> str:
        return self.kind if self.partition is None else f"{self.kind}/{self.partition}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream: DeadStream
    id: str
    fields: dict[str, str]

    @property
    def ms(self) -> int:
        head = self.id.split("-", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def original(self) -> dict[str, str]:
        meta = META_FIELDS[self.stream.kind]
        return {k: v for k, v in self.fields.items() if k not in meta}

    @property
    def reason(self) -> str:
        reason = self.fields.get("reason", "")
        detail = self.fields.get("detail", "")
        return f"{reason}: {detail}" if detail else reason

    def summary(self) -> str:
        """One line saying what the entry is about."""
        f = self.fields
        if self.stream.kind == "sends":
            if "m" in f and "i" in f:
                return f"{f.get('e', '?')}  ({f['m']}_{f['i']})"
            return "not a job: " + ", ".join(sorted(self.original))[:80]
        if self.stream.kind == "webhooks":
            return f"{f.get('type', '?')} webhook {f.get('webhook_id', '?')} to {f.get('endpoint')}"
        if self.stream.kind == "requests":
            try:
                message = msgspec.json.decode(f.get(REQUEST_FIELD, "").encode("utf-8", "replace"))
                topic = message.get("topic_id", "?")
                listed = [message.get("emails"), message.get("recipients")]
                lists = [items for items in listed if isinstance(items, list)]
                count = sum(len(items) for items in lists) if lists else "?"
                return f"topic {topic!r}, {count} recipient(s)"
            except (msgspec.DecodeError, AttributeError):
                return "undecodable message"
        try:
            event = msgspec.json.decode(f.get("e", "").encode("utf-8", "replace"))
            return f"{event.get('type', '?')} event, topic {event.get('topic', '')!r}"
        except (msgspec.DecodeError, AttributeError):
            return "undecodable event"


@dataclass(slots=True)
class Outcome:
    letter: DeadLetter
    replayed: bool
    detail: str  # what became of it (a new entry id...), or why it was skipped


def dead_streams(keys: Keys, kinds: Iterable[str] = STREAMS) -> list[DeadStream]:
    chosen = set(kinds)
    streams = []
    if "requests" in chosen:
        streams.append(DeadStream("requests", keys.requests_dead, None, keys.requests))
    for p in keys.partitions:
        if "sends" in chosen:
            streams.append(DeadStream("sends", p.sends_dead, p.index, p.sends))
    for p in keys.partitions:
        if "events" in chosen:
            streams.append(DeadStream("events", p.events_dead, p.index, p.events))
    for p in keys.partitions:
        if "webhooks" in chosen:
            streams.append(DeadStream("webhooks", p.webhooks_dead, p.index, p.webhook_due))
    return streams


async def lengths(client: Redis, streams: list[DeadStream]) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for s in streams:
        pipe.xlen(s.key)
    return {s.label: int(n) for s, n in zip(streams, await pipe.execute(), strict=True)}


async def newest(client: Redis, streams: list[DeadStream], limit: int) -> list[DeadLetter]:
    """The `limit` most recent dead letters over all the streams, newest first."""
    letters: list[DeadLetter] = []
    for s in streams:
        for entry_id, fields in cast(Entries, await client.xrevrange(s.key, count=limit)):
            letters.append(DeadLetter(s, entry_id, dict(fields or {})))
    letters.sort(key=lambda d: id_key(d.id), reverse=True)
    return letters[:limit]


async def find(client: Redis, streams: list[DeadStream], entry_id: str) -> list[DeadLetter]:
    """The dead letters with this id (one per stream at most)."""
    id_key(entry_id)  # raises InputError for something that is not an id
    found = []
    for s in streams:
        for got_id, fields in cast(Entries, await client.xrange(s.key, entry_id, entry_id)):
            found.append(DeadLetter(s, got_id, dict(fields or {})))
    return found


async def every(client: Redis, stream: DeadStream, before: str = "+") -> AsyncIterator[DeadLetter]:
    """Every entry (older than `before` when given), oldest first, a page at a time. Safe while
    entries are being deleted: each page starts after the last id seen."""
    start = "-"
    while True:
        page = cast(Entries, await client.xrange(stream.key, start, before, count=PAGE))
        for entry_id, fields in page:
            yield DeadLetter(stream, entry_id, dict(fields or {}))
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0]


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise InputError(
            "invalid_id", f"{entry_id!r} is not a stream entry id (like 1718000000000-0)"
        )
    return int(ms), int(seq or 0)


# --- replay ---------------------------------------------------------------------------------------


class Replayer:
    def __init__(self, client: Redis, settings: Settings, keys: Keys, force: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.limits = Limits.from_settings(settings)
        self.force = force

    async def replay(self, letter: DeadLetter) -> Outcome:
        kind = letter.stream.kind
        if kind == "sends":
            return await self.replay_job(letter)
        if kind == "webhooks":
            return await self.replay_webhook(letter)
        problem = self.request_problem(letter) if kind == "requests" else event_problem(letter)
        if problem and not self.force:
            return Outcome(letter, False, f"{problem} (--force replays it anyway)")
        original = letter.original
        if kind == "requests":
            if REQUEST_FIELD not in original:
                return Outcome(letter, False, f"no '{REQUEST_FIELD}' field: nothing to replay")
            original = {REQUEST_FIELD: original[REQUEST_FIELD]}
        if not original:
            return Outcome(letter, False, "no original fields: nothing to replay")
        return await self.move(letter, original)

    async def move(self, letter: DeadLetter, original: dict[str, str]) -> Outcome:
        """XADD the original to its stream and XDEL the dead letter, both or neither."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(letter.stream.origin, as_fields(original))
            pipe.xdel(letter.stream.key, letter.id)
            new_id, deleted = await pipe.execute()
        if not int(deleted):
            # Another replay took it between our read and now; ours is a duplicate then, but a
            # harmless one for requests (a new message id) and events (a malformed one aside,
            # counted once more). Say so rather than hide it.
            return Outcome(letter, True, f"new entry {new_id} (the dead letter was already gone)")
        return Outcome(letter, True, f"new entry {new_id}")

    async def replay_webhook(self, letter: DeadLetter) -> Outcome:
        """Back on the delivery queue, due now; the endpoint must still exist."""
        f = letter.fields
        if not {"endpoint", "webhook_id", "body", "id"} <= set(f):
            return Outcome(letter, False, "not a webhook delivery: nothing to replay")
        if not await self.client.hexists(self.keys.webhook_endpoints, f["endpoint"]):
            return Outcome(letter, False, f"endpoint {f['endpoint']} no longer exists")
        assert letter.stream.partition is not None
        p = self.keys.partition(letter.stream.partition)
        done = await Queue(self.client).requeue(p, letter.id, f, int(time.time() * 1000))
        if done == 0:
            return Outcome(letter, False, "already replayed or purged")
        if done < 0:
            return Outcome(letter, False, "this delivery is queued already")
        return Outcome(letter, True, f"delivery {f['id']} queued again, due now")

    def request_problem(self, letter: DeadLetter) -> str:
        raw = letter.fields.get(REQUEST_FIELD)
        if raw is None:
            return ""
        try:
            message = decode_request(raw.encode("utf-8"))
            # A stored template is read again when the dispatcher takes the replayed entry.
            validate_message(stand_in(message), self.limits, strict=False)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError) as exc:
            return f"still undecodable: {exc}"
        except InputError as exc:
            return f"still invalid: {exc.error}: {exc.detail}"
        return ""

    async def replay_job(self, letter: DeadLetter) -> Outcome:
        try:
            job = Job.from_fields(letter.fields)
        except ValueError:
            if not self.force:
                return Outcome(letter, False, "not a job (--force replays it anyway)")
            return await self.move(letter, letter.original)
        for _ in range(WATCH_ATTEMPTS):
            try:
                return await self.requeue(letter, job)
            except WatchError:
                continue
        return Outcome(letter, False, "the job kept changing under the replay; try again")

    async def requeue(self, letter: DeadLetter, job: Job) -> Outcome:
        """Reset a failed job and queue it again, in one optimistic transaction."""
        assert letter.stream.partition is not None
        p = self.keys.partition(letter.stream.partition)
        state_key, content_key = p.state(job.msg_id), p.message(job.msg_id)
        finals_key = p.finals(job.msg_id)
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(state_key, finals_key, content_key, letter.stream.key)
            # a final byte, else the state hash (a claim, or an older version's final state)
            byte = str(await pipe.getrange(finals_key, job.index, job.index) or "")
            in_finals = bool(byte) and byte != NOT_FINAL
            state = byte if in_finals else await pipe.hget(state_key, str(job.index))
            topic = await pipe.hget(content_key, "topic")
            still_dead = await pipe.xrange(letter.stream.key, letter.id, letter.id)
            if not still_dead:
                return Outcome(letter, False, "already replayed or purged")
            if topic is None:
                return Outcome(
                    letter, False, "the message content has expired (CONTENT_TTL): cannot send"
                )
            reset = bool(state) and DeliveryState.parse(str(state)).kind is Kind.FAILED
            if state and not reset:
                name = STATE_NAMES.get(str(state)[:1], str(state))
                return Outcome(letter, False, f"the recipient is already {name}: not sent again")
            if not state and not self.force:
                return Outcome(
                    letter,
                    False,
                    "its delivery state has expired, so the failure may still be counted "
                    "(--force requeues it without correcting the counts)",
                )
            pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if reset:
                if in_finals:
                    pipe.setrange(finals_key, job.index, NOT_FINAL)
                else:
                    pipe.hdel(state_key, str(job.index))
                pipe.xadd(
                    p.events, as_fields(event_fields(requeued_event(job, str(topic), str(state))))
                )
            pipe.xadd(p.sends, as_fields(job.fields()))
            pipe.xdel(letter.stream.key, letter.id)
            replies = await pipe.execute()
        new_id = replies[2] if reset else replies[0]
        corrected = "" if reset else " (counts not corrected)"
        return Outcome(letter, True, f"new entry {new_id}{corrected}")


def requeued_event(job: Job, topic: str, state: str) -> Event:
    return Event(
        type=EventType.REQUEUED,
        ts=int(time.time() * 1000),
        topic=topic,
        msg_id=job.msg_id,
        index=job.index,
        email=job.email,
        detail=f"replayed from the dead letters (was {state})"[:500],
    )


def event_problem(letter: DeadLetter) -> str:
    try:
        parse_entry(letter.original)
    except MalformedEvent as exc:
        return f"still malformed: {exc}"
    return ""


# --- purge ----------------------------------------------------------------------------------------


async def count_before(client: Redis, stream: DeadStream, before: str | None) -> int:
    if before is None:
        return int(await client.xlen(stream.key))
    return sum([1 async for _ in every(client, stream, "(" + before)])


async def purge(client: Redis, stream: DeadStream, before: str | None) -> int:
    """Delete every entry (or those with an id below `before`); the number removed."""
    if before is None:
        length = int(await client.xlen(stream.key))
        await client.delete(stream.key)
        return length
    return int(await client.xtrim(stream.key, minid=before, approximate=False))

"""One stream consumer: the loop every role that reads a stream through a consumer group shares.

`StreamConsumer` owns what every consumer does the same way; a subclass says what differs:

- `group`, `streams()`: the group and the streams it reads (one per partition, or just one);
- `process(stream, entry_id, fields)`: one entry, for the default reader, which feeds tasks
  bounded by `concurrency` (XREADGROUP COUNT = free slots); or `consume(stream)` for a reader of
  its own (stats: batches applied with their XACK in one transaction);
- `upkeep()`: periodic jobs; by default reclaim (one XAUTOCLAIM page into free slots), trim
  (never below an entry some group still needs) and forgetting idle consumers;
- `background(stop)`: long-running tasks of its own beside the readers (the sender's upkeep);
  each ends on `stop`, or on `drained` when it serves the work in hand to the end;
- `prepare()` before the first read, `on_redis_back()` after an outage, `after_drain()` once
  the work in hand is finished or cancelled (the sender hands its leftovers over).

One lifecycle, `await consumer.run(stop)`, with this shutdown contract:

- `stop` is only ever set (by a signal handler, or the caller); all the work happens in `run`;
- at `stop` reading ends at once: a blocking XREADGROUP is abandoned rather than awaited (what
  it may have delivered stays pending and is reclaimed), and upkeep ends;
- the readers' last work (stats: the batch in hand) and the in-flight tasks (with those they
  start meanwhile) then get SHUTDOWN_GRACE in all; whatever still runs is cancelled, and its
  entries stay pending;
  `after_drain()` runs, then `drained` is set and the `background` tasks are cancelled. The
  cancellation only cuts a wait short: a loop never counts on it to end, because on Python 3.11
  `asyncio.wait_for` (around every command redis-py writes) loses a cancellation that arrives
  as its awaitable finishes (CPython gh-86296), and a loop that ends only when cancelled would
  then run for ever;
- `run` never closes the client: whoever made it closes it, in `finally`; setting `stop` twice is
  harmless.

Invariants: the base acknowledges nothing but an entry deleted while pending (nothing is left to
do for it): every other XACK is the subclass's, after its result is stored. A Redis outage never
ends a loop: a reader waits for Redis and starts again (re-creating its group, which a Redis
that lost its data no longer has); an upkeep job logs and runs again at its next time. BLOCK is
capped at LONGEST_BLOCK_MS, which `connect` keeps below the socket timeout.

The plain functions also serve work outside a consumer's loops (the sender's upkeep).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from redis.exceptions import ResponseError

from sesflow.common import scripts
from sesflow.common.connection import (
    LONGEST_BLOCK_MS,
    UNAVAILABLE,
    connect,
    ensure_group,
    transient_reply,
    wait_for_redis,
)
from sesflow.common.errors import RedisUnavailable
from sesflow.common.lean_redis import LeanRedis, entries_of, lane_of
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings
from sesflow.common.streams import trim_acknowledged

log = get_logger(__name__)

T = TypeVar("T")

# An entry as XREADGROUP / XAUTOCLAIM give it; fields are None when it was deleted while pending.
Entry = tuple[str, dict[str, str] | None]

READ_BLOCK_MS = LONGEST_BLOCK_MS  # also how soon a reader notices a lost connection
READ_GUARD_S = 5.0  # a blocking read that outlives its BLOCK by this much is on a dead socket
RESTART_PAUSE_S = 1.0  # after an unexpected error, before a reader starts again
# A consumer silent this long and holding nothing is taken for gone. Should it be alive after all
# (before Redis 7.2 a read that finds nothing does not count as activity), its next read creates
# it again; one holding entries is never deleted (`forget_consumer.lua`).
FORGET_IDLE_S = 3600.0
FORGET_EVERY_S = 60.0


def consumer_name() -> str:
    """Unique per process, readable in XINFO: host-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def consumer_client(settings: Settings, **overrides: Any) -> Any:
    """A client whose replies survive arbitrary bytes: a producer may XADD anything, and a strict
    decode would fail the whole XREADGROUP reply (the stream would stop being read). With
    surrogateescape the original bytes come through, so a dead letter is written back exactly
    as it came."""
    return connect(settings, **{"encoding_errors": "surrogateescape", **overrides})


async def wait_at_most(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, at most `seconds`; whether it is set. With asyncio.timeout,
    not wait_for: on Python 3.11 wait_for wraps the wait in a task of its own, which a loop
    waiting many times a second (the pump, a reader's slots) pays for each time, and it can lose
    a cancellation that lands as that task finishes."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
    return event.is_set()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less when `stop` is set meanwhile; True when stopped."""
    return await wait_at_most(stop, seconds)


async def until_stopped(
    stop: asyncio.Event, aw: Awaitable[T], within: float | None = None
) -> T | None:
    """`aw`'s result, or None as soon as `stop` is set (then `aw` is cancelled, not awaited);
    TimeoutError when it takes longer than `within` seconds (then it is cancelled too). Kept
    here rather than by `asyncio.wait_for`, which would cost a reader one more task per read."""
    if stop.is_set():
        if inspect.iscoroutine(aw):
            aw.close()  # never started: nothing was sent
        return None
    task = asyncio.ensure_future(aw)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
    timed_out = not task.done() and not stop.is_set()
    if not task.done():
        await asyncio.wait({task})
    if timed_out:
        raise TimeoutError(f"no answer within {within}s")
    if task.cancelled() or (stop.is_set() and task.exception() is not None):
        return None
    return task.result()


@dataclass(frozen=True, slots=True)
class ClaimedPage:
    cursor: str  # where the next page starts; "0-0" once the whole pending list was walked
    entries: list[Entry]


async def claim_page(  # noqa: PLR0913 (XAUTOCLAIM's own arguments)
    client: Any,
    stream: str,
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    cursor: str,
    count: int,
) -> ClaimedPage:
    """One page of XAUTOCLAIM: entries idle for `min_idle_ms` (their consumer died) become
    `consumer`'s. Not JUSTID: redis-py then drops the cursor needed to page through."""
    reply = await client.xautoclaim(
        stream, group, consumer, min_idle_ms, start_id=cursor, count=count
    )
    entries = [(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
    return ClaimedPage(cursor=str(reply[0]), entries=entries)


async def delivery_counts(client: Any, stream: str, group: str, ids: list[str]) -> dict[str, int]:
    """How often each entry was delivered (XPENDING), for a consumer that gives up on an entry
    delivered too often (a dead letter rather than a poison entry reclaimed for ever)."""
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    counts: dict[str, int] = {}
    for rows in await pipe.execute():
        for row in rows:
            counts[str(row["message_id"])] = int(row["times_delivered"])
    return counts


async def forget_idle_consumers(
    client: Any, stream: str, group: str, *, keep: str, idle_ms: float
) -> list[str]:
    """XGROUP DELCONSUMER every consumer (but `keep`) idle for longer than `idle_ms` AND holding
    no pending entry; returns their names. Deleting one that holds entries would lose them, so
    `forget_consumer.lua` checks again in the same step as the delete."""
    try:
        consumers = await client.xinfo_consumers(stream, group)
    except ResponseError as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc):
            return []
        raise
    forget = scripts.register(client, "forget_consumer")
    gone = []
    for consumer in consumers:
        name = str(consumer["name"])
        idle = name != keep and not int(consumer["pending"]) and int(consumer["idle"]) > idle_ms
        if idle and await forget(keys=[stream], args=[group, name, int(idle_ms)]):
            gone.append(name)
    return gone


def log_failure(what: str, exc: BaseException, **context: Any) -> None:
    """For an `except` block: an outage or a transient reply is a warning; anything else is a
    bug worth a traceback."""
    if isinstance(exc, (*UNAVAILABLE, RedisUnavailable)) or transient_reply(exc):
        log.warning(f"{what}: redis unavailable", error=str(exc), **context)
    else:
        log.exception(f"{what} failed", **context)


@dataclass(frozen=True, slots=True)
class Upkeep:
    """A periodic job: `step` every `interval` seconds, the first one after `first_after`
    (default: `interval`)."""

    name: str
    interval: float
    step: Callable[[], Awaitable[object]]
    first_after: float | None = None


async def periodic(job: Upkeep, stop: asyncio.Event) -> None:
    """Run `job` until `stop`; a failure is logged and the job runs again at its next time."""
    delay = job.interval if job.first_after is None else job.first_after
    while not await sleep_or_stop(stop, delay):
        delay = job.interval
        try:
            await job.step()
        except Exception as exc:
            log_failure("upkeep", exc, job=job.name)


class StreamConsumer:
    """The base of every consumer; see the module docstring for the contract."""

    group: ClassVar[str]
    role: ClassVar[str] = "consumer"  # names its log lines and tasks
    concurrency: ClassVar[int] = 8  # entries handled at once by the default reader

    def __init__(self, client: Any, settings: Settings, *, consumer: str | None = None) -> None:
        self.client = client
        self.settings = settings
        self.consumer = consumer or consumer_name()
        self.stop = asyncio.Event()  # replaced by `run`'s
        self.drained = asyncio.Event()  # the work in hand is finished or cancelled
        self.inflight: set[asyncio.Task[None]] = set()
        self.reclaim_cursor: dict[str, str] = {}
        self.reclaim_idle_ms = int(settings.reclaim_idle * 1000)
        self.reclaim_every = 10.0
        self.trim_every = 30.0
        self.forget_idle_ms = FORGET_IDLE_S * 1000

    # --- what a subclass says -------------------------------------------------------------------

    def streams(self) -> Sequence[str]:
        raise NotImplementedError

    async def process(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        """One entry of the default reader; XACK it once its result is stored. An exception
        leaves it pending (it is reclaimed)."""
        raise NotImplementedError

    def upkeep(self) -> list[Upkeep]:
        return [
            self.per_stream("reclaim", self.reclaim_every, self.reclaim),
            self.per_stream("trim", self.trim_every, self.trim),
            self.per_stream("consumers", FORGET_EVERY_S, self.forget_idle_consumers),
        ]

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        """Tasks of this consumer's own, started beside the readers; each ends on `stop`, or on
        `drained` when it must serve the work in hand until then (never only when cancelled)."""
        return []

    async def prepare(self) -> None:
        """Before the first read (Redis may be down: retry until `self.stop`)."""

    def on_redis_back(self) -> None:
        """Redis answers again after this process saw it unreachable."""

    async def after_drain(self) -> None:
        """The work in hand is finished or cancelled; `background` tasks still run."""

    def interrupted(self, stream: str, exc: BaseException) -> None:
        """A reader of `stream` failed with `exc` and will start again (state to reset)."""

    # --- the lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`, then finish the work in hand within SHUTDOWN_GRACE."""
        self.stop = stop
        await self.prepare()
        if stop.is_set():
            return
        background = [
            asyncio.create_task(work, name=f"{self.role}-background")
            for work in self.background(stop)
        ]
        upkeep = [
            asyncio.create_task(periodic(job, stop), name=f"{self.role}-{job.name}")
            for job in self.upkeep()
        ]
        readers = [
            asyncio.create_task(self.keep_reading(stream), name=f"{self.role}-read-{stream}")
            for stream in self.streams()
        ]
        log.info(f"{self.role} reading", consumer=self.consumer, streams=len(readers))
        try:
            await asyncio.wait(readers)  # they return once `stop` is set
        finally:
            if not stop.is_set():  # cancelled from outside: nothing more is read either
                for task in readers:
                    task.cancel()
            for task in upkeep:
                task.cancel()
            await self.drain(readers)
            try:
                await self.after_drain()
            except Exception as exc:
                log_failure(f"{self.role}: after the drain", exc)
            self.drained.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*upkeep, *background, return_exceptions=True)
            log.info(f"{self.role} stopped", consumer=self.consumer)

    async def drain(self, readers: Sequence[asyncio.Task[None]] = ()) -> None:
        """Give the readers' last work and the in-flight tasks SHUTDOWN_GRACE in all; cancel
        what is left (its entries stay pending and are reclaimed)."""
        deadline = time.monotonic() + self.settings.shutdown_grace
        if self.inflight:
            log.info("finishing in-flight jobs", role=self.role, jobs=len(self.inflight))
        for tasks in (set(readers), self.inflight):
            # again until none is left: a task may hand its work on to a new one meanwhile
            while running := {task for task in tasks if not task.done()}:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait(running, timeout=left)
        late = [task for task in (*readers, *self.inflight) if not task.done()]
        if late:
            log.warning(f"{self.role}: shutdown grace expired; cancelling", tasks=len(late))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def keep_reading(self, stream: str) -> None:
        """`consume(stream)` until `stop`, then start again, group first: at once when the group
        is gone (the stream was deleted, or Redis lost its data), once Redis answers after an
        outage, after a pause on anything else (a bug)."""
        while not self.stop.is_set():
            try:
                await ensure_group(self.client, stream, self.group)
                await self.consume(stream)
            except Exception as exc:
                self.interrupted(stream, exc)
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    log.warning(f"{self.role}: group gone; creating it again", stream=stream)
                    continue
                log_failure(f"{self.role}: reading", exc, stream=stream)
                if isinstance(exc, (*UNAVAILABLE, RedisUnavailable)):
                    await self.wait_for_redis(self.stop)
                else:
                    await sleep_or_stop(self.stop, RESTART_PAUSE_S)

    async def wait_for_redis(self, stop: asyncio.Event | None) -> bool:
        """Wait until Redis answers (False: `stop` came first); then `on_redis_back`."""
        back = await wait_for_redis(self.client, stop, log)
        self.on_redis_back()
        return back

    # --- reading --------------------------------------------------------------------------------

    async def consume(self, stream: str) -> None:
        """The default reader: new entries into tasks, as many as there are free slots."""
        while not self.stop.is_set():
            count = await until_stopped(self.stop, self.free_slots())
            if not count:
                return
            for entry_id, fields in await self.read(stream, ">", count, READ_BLOCK_MS):
                self.spawn(stream, entry_id, fields)

    async def read(
        self, stream: str, start: str, count: int, block_ms: int | None, *, at_once: bool = True
    ) -> list[Entry]:
        """XREADGROUP from `start` (">": new entries, "0": our own pending list), blocking up to
        `block_ms` (None: not at all; at most READ_BLOCK_MS); [] at `stop`, which cuts a
        blocking read short. Not `at_once`: the caller has just found nothing new, so a
        blocking read of new entries goes without the lanes' first read that answers at once."""
        if self.stop.is_set():
            return []
        block = None if block_ms is None else max(1, min(block_ms, READ_BLOCK_MS))
        guard = (block or 0) / 1000 + READ_GUARD_S
        lane = lane_of(self.client) if start == ">" else None
        if lane is not None:
            return await self.read_on_lanes(lane, stream, count, block, guard, at_once=at_once)
        call = self.client.xreadgroup(
            self.group, self.consumer, {stream: start}, count=count, block=block
        )
        reply = await until_stopped(self.stop, call, guard)
        return list(reply[0][1]) if reply else []

    async def read_on_lanes(
        self,
        lane: LeanRedis,
        stream: str,
        count: int,
        block: int | None,
        guard: float,
        *,
        at_once: bool = True,
    ) -> list[Entry]:
        """New entries through the process's lean lanes (common/lean_redis.py): first a read
        that answers at once (a busy reader mostly finds entries), then, only when there are
        none, the blocking read on the stream's own lane, where it holds up nothing else."""
        read = ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count)
        found = await lane.execute(*read, "STREAMS", stream, ">") if at_once else None
        if not found and block is not None:
            blocking = (*read, "BLOCK", block, "STREAMS", stream, ">")
            call = lane.reader(stream).execute_blocking(*blocking)
            found = await until_stopped(self.stop, call, guard)
        return entries_of(found[0][1]) if found else []

    def spawn(self, stream: str, entry_id: str, fields: dict[str, str] | None) -> None:
        task = asyncio.create_task(self.guarded(stream, entry_id, fields))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def guarded(self, stream: str, entry_id: str, fields: dict[str, str] | None) -> None:
        try:
            if fields is None:  # deleted while pending: nothing left to do
                await self.client.xack(stream, self.group, entry_id)
            else:
                await self.process(stream, entry_id, fields)
        except Exception as exc:  # left pending: XAUTOCLAIM hands it out again
            log_failure(f"{self.role}: entry left pending", exc, stream=stream, entry=entry_id)

    async def free_slots(self) -> int:
        """Wait for at least one of `concurrency` slots; how many are free."""
        while len(self.inflight) >= self.concurrency:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        return self.concurrency - len(self.inflight)

    # --- upkeep ---------------------------------------------------------------------------------

    def per_stream(
        self,
        name: str,
        interval: float,
        step: Callable[[str], Awaitable[object]],
        first_after: float | None = None,
    ) -> Upkeep:
        """A job that runs `step` for every stream; one stream's failure does not keep the
        others waiting."""

        async def each_stream() -> None:
            for stream in self.streams():
                try:
                    await step(stream)
                except Exception as exc:
                    log_failure("upkeep", exc, job=name, stream=stream)

        return Upkeep(name, interval, each_stream, first_after)

    async def claim(self, stream: str, count: int, min_idle_ms: int | None = None) -> list[Entry]:
        """The next page of entries idle for `min_idle_ms` (default RECLAIM_IDLE), now ours.
        The cursor walks the whole pending list across calls, past entries still in use."""
        try:
            page = await claim_page(
                self.client,
                stream,
                self.group,
                self.consumer,
                min_idle_ms=self.reclaim_idle_ms if min_idle_ms is None else min_idle_ms,
                cursor=self.reclaim_cursor.get(stream, "0-0"),
                count=count,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # not created yet (or lost): nothing to claim
                return []
            raise
        self.reclaim_cursor[stream] = page.cursor
        return page.entries

    async def reclaim(self, stream: str, *, min_idle_ms: int | None = None) -> int:
        """Take over one page of a dead consumer's entries, into free slots; how many."""
        entries = await self.claim(stream, await self.free_slots(), min_idle_ms)
        for entry_id, fields in entries:
            self.spawn(stream, entry_id, fields)
        if entries:
            log.info(f"{self.role}: reclaimed entries", stream=stream, count=len(entries))
        return len(entries)

    async def trim(self, stream: str) -> int:
        """Trim below the oldest entry any group still needs; how many entries went."""
        return await trim_acknowledged(self.client, stream)

    async def forget_idle_consumers(self, stream: str) -> list[str]:
        return await forget_idle_consumers(
            self.client, stream, self.group, keep=self.consumer, idle_ms=self.forget_idle_ms
        )

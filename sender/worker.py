"""The sender: consumer group `senders` on every partition's `sends` stream.

One job = one recipient. Its life, in order:

1. parse the entry (`Job.from_fields`); malformed -> dead letter + XACK;
2. content from the in-process cache; one pipelined pre-check: state, topic stop time,
   suppression. Already final -> XACK only (a redelivery is never sent again). Found inflight
   (a sender died between claim and record) -> ON_AMBIGUOUS=skip: `u` + `unknown`;
   =resend: send again. Stopped -> `x`; suppressed -> `p`; content gone -> `f:no_content`;
   more than MAX_ATTEMPTS deliveries -> `f:max_attempts` + dead letter. None of these spends a
   rate token;
3. a token from the shared limiter (the wait is cancelled by shutdown: nothing is claimed yet);
4. `claim.lua`: still queued and not stopped -> `i:<ms>:<consumer>`; if the claim came back
   too late for the token's slot, the claim is released and a new token taken (no bunching);
5. SES: SendBulkEmail with the other jobs of its message claimed together (up to 50 entries),
   or SendEmail (`sender.outbox`, SEND_MODE);
6. `record.lua`: final state + event + XACK at once; the SES id -> request id link rides in the
   same round trip.

Two paths run these steps, with the same rules:

- **A read batch** (`sender.read_batch`), the hot path: the new entries of one read (an
  XREADGROUP, or the pump's top-up that reads for the reader: `Sender.read_new`) go
  through steps 1-3 together (one task, one pre-check round trip, one booking of rate slots);
  at each grid point of the rate schedule the jobs of every batch due then go on together: one
  claim call per partition, one SES call per message (per job in SEND_MODE=single), one record
  call per SES call. No task or future per job. It takes only the plain case: first delivery,
  nothing stored yet, not stopped, not suppressed, setup not paused, slot not late, claim `ok`,
  SES answer a MessageId or a rejection.
- **The per-job path** (`Sender.process`, `Sender.send_loop`): everything else, one `Attempt`
  (`sender.attempt`) per job. An entry a read batch cannot take before its claim is decided here
  from the start; a job whose SES call ended in any other error (throttled, transient, paused,
  setup fault, ambiguous) continues here from that outcome (`Sender.resume`), its claim still
  held. Reclaimed entries always go this way. Its
  steps 2, 4 and 6 are batched per replica too (`sender.batching`): the jobs that reach a step at
  the same moment share one round trip (one pipeline, one limiter call, one claim or record
  script call per partition), each job still decided on its own and atomically.

**The ambiguous window** is exactly steps 4-6: from the claim being stored to the record being
stored. Nothing is awaited inside it except the SES call and the two Redis scripts (a record
may wait for the one record call of its partition already in flight, i.e. one round trip); a
read batch records each SES call's jobs as soon as that call answers, and hands a job over to
the per-job path without awaiting anything. A job is
left `inflight` only when this process dies (SIGKILL, power loss, cancellation after
SHUTDOWN_GRACE) inside it, or when Redis loses the record; such a job is later marked `unknown`
(skip) or sent again (resend). A Redis outage inside the window does not open it further for
data: the record is retried until Redis answers (until SHUTDOWN_GRACE on stop).

SES outcomes (the table `ON_ERROR` maps each error class to its action): throttled -> release
the claim, slow the shared bucket (AIMD), back off, retry (never failed); daily quota -> release,
pause everyone; paused/suspended -> release, pause everyone, report; setup fault (a configuration
set that does not exist, an unverified sender identity: `sender.setup_faults`) -> release, pause
that setup for every replica, alert, wait for a probe to succeed; nothing fails and no attempt is
counted; rejected -> `f:<code>`; transient (certainly not sent) -> release and retry, and after
MAX_ATTEMPTS in a row the setup fault `unreachable` (all sending pauses, the job counts afresh)
rather than failing the recipient; a bulk entry's TRANSIENT_FAILURE -> retry,
`f:transient:<status>` + dead letter after MAX_ATTEMPTS; ambiguous (any 5xx, a timeout or reset
after sending) -> like a crash in the window (resend: `unknown` after MAX_ATTEMPTS), and a 5xx
slows the shared rate as a throttle does.

Concurrency: SENDER_CONCURRENCY slots shared by one reader per partition; a reader asks for at
most its fair share of the free slots (COUNT), so no partition starves the others. The lifecycle
(readers, drain within SHUTDOWN_GRACE, hand-over, upkeep ended last) is the one every
consumer shares (`common.consumer.StreamConsumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from redis.exceptions import ResponseError

from sesflow.common import sentry
from sesflow.common.aws import Quota
from sesflow.common.connection import UNAVAILABLE
from sesflow.common.consumer import (
    READ_BLOCK_MS,
    Entry,
    StreamConsumer,
    Upkeep,
    delivery_counts,
    sleep_or_stop,
    wait_at_most,
)
from sesflow.common.errors import (
    RedisUnavailable,
    SesAmbiguous,
    SesEntryTransient,
    SesError,
    SesPaused,
    SesQuotaExceeded,
    SesRejected,
    SesSetupFault,
    SesThrottled,
    SesTransient,
)
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys, accepted_ms
from sesflow.common.logs import get_logger
from sesflow.common.schema import Event, Job, MessageContent
from sesflow.common.settings import Settings
from sesflow.sender import metrics
from sesflow.sender.attempt import Attempt, LeavePending, Step, Verdict, utf8_fields
from sesflow.sender.compose import compose
from sesflow.sender.content import ContentCache
from sesflow.sender.outbox import Outbox
from sesflow.sender.parking import Parking
from sesflow.sender.pump import OUTAGE_INTERVAL_S, Pump
from sesflow.sender.rate_limit import RateLimiter
from sesflow.sender.read_batch import GridPoints, ReadBatch
from sesflow.sender.ses_links import LinkPolicy
from sesflow.sender.setup_faults import SetupFaults, scope_of, scopes_of
from sesflow.sender.state import (
    QUEUED,
    STOPPED,
    SUPPRESSED,
    UNKNOWN,
    ClaimValues,
    DeliveryState,
    DeliveryStore,
    Kind,
    Outcome,
    Precheck,
    RecordItem,
    dead_entry,
    now_ms,
)
from sesflow.sender.upkeep import run_upkeep

log = get_logger(__name__)

T = TypeVar("T")

# A reader with fewer than half its share of slots free waits up to this long for more
# (Slots.take): the jobs it already holds keep the rate busy meanwhile, and reading, pre-checking
# and booking rate slots for 32 jobs costs the round trips of one. At 500/s, 10 ms read ~10 jobs
# at a time (one XREADGROUP, pre-check and limiter call per 10 recipients).
READ_LINGER_S = 0.05
SES_PAUSE_S = 5.0  # SendingPaused / AccountSuspended: pause, then let the next call probe
SETUP_POLL_S = 0.25  # a job waiting on a paused setup looks again this often (local state)
QUOTA_PAUSE_S = 60.0  # daily quota exhausted: the upkeep's quota reading refines this
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
FAILED_NO_CONTENT = DeliveryState.failed("no_content")
FAILED_MAX_ATTEMPTS = DeliveryState.failed("max_attempts")


class SesSender(Protocol):
    async def send_email(self, email: Any) -> str: ...

    async def send_bulk_email(self, bulk: Any) -> list[Any]: ...


Composer = Callable[[Settings, bytes, MessageContent, Job], Any]
QuotaSource = Callable[[Settings], Awaitable[Quota | None]]


def unreachable(exc: SesTransient) -> SesSetupFault:
    """SES out of reach for MAX_ATTEMPTS tries of one job: a fault of the whole setup."""
    return SesSetupFault(exc.code, exc.message or str(exc), exc.status, reason="unreachable")


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter (half to full)."""
    delay: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempt)
    return delay * random.uniform(0.5, 1.0)


class Slots:
    """A counting semaphore that readers can take several units of at once (XREADGROUP COUNT)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._available = asyncio.Event()
        self._available.set()

    def try_take(self, most: int) -> int:
        taken = min(self.free, most)
        self.free -= taken
        if self.free == 0:
            self._available.clear()
        return taken

    async def take(
        self, most: int, stop: asyncio.Event, least: int = 1, linger: float = 0.0
    ) -> int:
        """At least one unit (up to `most`), or 0 once `stop` is set. Fewer than `least` free:
        wait up to `linger` seconds for more (until `least`), so that a busy replica reads,
        claims and sends in batches rather than one job at a time as single slots free up."""
        while not stop.is_set():
            taken = self.try_take(most)
            if taken:
                deadline = time.monotonic() + linger
                while taken < least and not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    await wait_at_most(self._available, left)
                    taken += self.try_take(most - taken)
                return taken
            await wait_at_most(self._available, READ_BLOCK_MS / 1000)
        return 0

    def give(self, count: int = 1) -> None:
        if count > 0:
            self.free += count
            self._available.set()


class Sender(StreamConsumer):
    """A sender replica: the shared consumer lifecycle (`common.consumer`), one reader per
    partition filling SENDER_CONCURRENCY slots, and the sender's upkeep beside it."""

    group = SENDERS_GROUP
    role = "sender"

    def __init__(
        self,
        settings: Settings,
        client: Any,
        ses: SesSender,
        secret: bytes,
        *,
        consumer: str | None = None,
        fetch_quota: QuotaSource | None = None,
    ) -> None:
        super().__init__(client, settings, consumer=consumer)
        self.ses = ses
        self.compose: Composer = compose  # the tracking `secret` signs its links
        self.secret = secret
        self.fetch_quota = fetch_quota
        self.keys = Keys(settings.redis_prefix, settings.send_partitions)
        self.part_of = {part.sends: part for part in self.keys.partitions}
        links = LinkPolicy(client, self.keys, settings.ses_id_links)
        self.store = DeliveryStore(client, self.keys, settings.content_ttl, links=links)
        self.limiter = RateLimiter(client, settings, self.keys)
        self.contents = ContentCache(client)
        self.outbox = Outbox(ses, settings.send_mode)
        self.claims = ClaimValues(self.consumer)
        self.setup = SetupFaults(client, self.keys, settings.setup_probe_interval, self.consumer)
        self.parking = Parking(client, self.keys, self.consumer)
        self.slots = Slots(settings.sender_concurrency)
        self.pump = Pump(settings, client, self.keys)
        # Entries this process is handling, per partition: the upkeep keeps them from going idle
        # (XCLAIM JUSTID), so no other replica reclaims a job that is merely waiting.
        self.held: dict[int, set[str]] = {p.index: set() for p in self.keys.partitions}
        self._grid_points: GridPoints | None = None
        self.reclaim_every = min(max(settings.reclaim_idle / 4, 0.2), 5.0)
        self.next_reclaim: dict[str, float] = {}  # per stream: when its reader reclaims again
        self.fair_share = max(1, math.ceil(settings.sender_concurrency / len(self.keys.partitions)))
        # A claim younger than this may belong to a live sender (a duplicate entry of the same
        # job being sent elsewhere): leave it. Older ones are from a sender that died: any entry
        # only reaches another consumer after RECLAIM_IDLE without a keep-alive.
        self.dead_claim_ms = int(settings.reclaim_idle * 1000 / 2)
        self.ses_pause_s = SES_PAUSE_S
        self.quota_pause_s = QUOTA_PAUSE_S
        # XAUTOCLAIM takes an entry for dead when it went RECLAIM_IDLE without a keep-alive. While
        # Redis is unreachable no replica's keep-alive runs, so right after an outage the entries
        # of every live replica look idle, and reclaiming them would mark jobs that are in the
        # middle of their SES call `unknown` (or send them twice with ON_AMBIGUOUS=resend). So no
        # reclaim until RECLAIM_IDLE after this process saw Redis come back: by then each live
        # replica's keep-alive, which runs as soon as Redis answers, has refreshed its entries.
        self.reclaim_not_before = 0.0

    # --- the consumer's hooks (`common.consumer.StreamConsumer`) -----------------------------

    def streams(self) -> list[str]:
        return list(self.part_of)

    def upkeep(self) -> list[Upkeep]:
        return []  # the sender's own loops (`background`): its keep-alive outlives the drain

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [
            run_upkeep(self, stop, self.drained),
            self.pump.run(stop),
        ]

    async def prepare(self) -> None:
        """A restart does not forget a paused setup."""
        while not self.stop.is_set():
            try:
                await self.setup.refresh()
                return
            except (*UNAVAILABLE, RedisUnavailable):
                await self.wait_for_redis(self.stop)

    def on_redis_back(self) -> None:
        self.reclaim_not_before = time.monotonic() + self.settings.reclaim_idle

    async def after_drain(self) -> None:
        """Whatever is still pending for this consumer after the drain was never sent (or was
        cut off by the grace period, or delivered by a read that `stop` cut short): make it
        look idle for RECLAIM_IDLE, so another replica's next XAUTOCLAIM takes it now instead of
        a RECLAIM_IDLE later. JUSTID: not a delivery."""
        idle_ms = int(self.settings.reclaim_idle * 1000) + 1
        for part in self.keys.partitions:
            try:
                await self.hand_over(part, idle_ms)
            except (*UNAVAILABLE, RedisUnavailable):
                log.warning("could not hand over pending jobs (redis unavailable)")

    async def hand_over(self, part: PartitionKeys, idle_ms: int) -> None:
        while True:
            rows = await self.client.xpending_range(
                part.sends, SENDERS_GROUP, "-", "+", 1000, consumername=self.consumer
            )
            fresh = [r["message_id"] for r in rows if r["time_since_delivered"] < idle_ms]
            if not fresh:
                return
            await self.client.xclaim(
                part.sends, SENDERS_GROUP, self.consumer, 0, fresh, idle=idle_ms, justid=True
            )
            log.info("handed over pending jobs", count=len(fresh), partition=part.index)

    # --- reading ----------------------------------------------------------------------------

    async def consume(self, stream: str) -> None:
        """Take free slots, fill them: first with entries of dead consumers when a reclaim pass
        is due (the reader does it, so reclaim and reading never compete for slots), then with
        new entries (`read_new`, as many as slots held). An error gives the slots back."""
        part = self.part_of[stream]
        while True:
            count = await self.slots.take(
                self.fair_share, self.stop, least=self.fair_share // 2, linger=READ_LINGER_S
            )
            if not count:
                return
            try:
                used = await self.reclaim_due(part, count)
                entries = [] if used else await self.read_new(part, count)
            except BaseException:
                self.slots.give(count)
                raise
            self.slots.give(count - used - len(entries))
            if entries:
                self.spawn_batch(part, entries)

    async def read_new(self, part: PartitionKeys, count: int) -> list[Entry]:
        """Up to `count` new entries. When the partition is due for a top-up, the pump tops it
        up and reads them in one script call, and only when that finds none, a blocking read
        waits for the next top-up (or for what a producer XADDs to `sends` itself)."""
        if self.stop.is_set():
            return []
        found: list[Entry] | None = None  # None: no read yet
        if self.pump.read_tops_up(part):
            try:
                found = await self.pump.read(part, self.consumer, count)
            except ResponseError as exc:
                # the top-up failed (a key of the wrong type, a bug): reading must go on, and
                # the pump loop, which logs its own failures, tries again
                log.warning("pump failed before a read", partition=part.index, error=str(exc))
                self.pump.put_off(OUTAGE_INTERVAL_S, part)
        if found:
            return found
        return await self.read(part.sends, ">", count, READ_BLOCK_MS, at_once=found is None)

    async def reclaim_due(self, part: PartitionKeys, count: int) -> int:
        """When a pass is due (and not held back after an outage), take over up to `count`
        entries idle for RECLAIM_IDLE (their consumer died), with their delivery counts (for
        MAX_ATTEMPTS), in slots the reader holds; how many. After a full page, reclaim again
        at once: there may be more."""
        due = max(self.next_reclaim.get(part.sends, 0.0), self.reclaim_not_before)
        if time.monotonic() < due:
            return 0
        self.next_reclaim[part.sends] = time.monotonic() + self.reclaim_every
        entries = await self.claim(part.sends, count)
        ids = [entry_id for entry_id, _ in entries]
        deliveries = await delivery_counts(self.client, part.sends, SENDERS_GROUP, ids)
        for entry_id, fields in entries:
            log.info("reclaimed job", entry=entry_id, deliveries=deliveries.get(entry_id, 1))
            self.spawn_job(part, entry_id, fields, deliveries.get(entry_id, 1))
        if entries:
            self.next_reclaim[part.sends] = 0.0
        return len(entries)

    def spawn_job(self, part: PartitionKeys, entry_id: str, fields: Any, deliveries: int) -> None:
        """Run one job; its slot was taken by the caller and is given back when it ends."""
        self.held[part.index].add(entry_id)
        self.track(self.process(part.sends, entry_id, fields, deliveries))

    def spawn_batch(self, part: PartitionKeys, entries: list[tuple[str, Any]]) -> None:
        """Run the new entries of one read together (`sender.read_batch`); one slot each."""
        self.held[part.index].update(entry_id for entry_id, _ in entries)
        self.track(ReadBatch(self, part, entries).run())

    def grid_points(self) -> GridPoints:
        """Where the read batches' jobs meet at their grid point (`sender.read_batch`)."""
        if self._grid_points is None:
            self._grid_points = GridPoints(self)
        return self._grid_points

    def track(self, work: Coroutine[Any, Any, None]) -> None:
        """A task the drain waits for at shutdown."""
        task = asyncio.create_task(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    def let_go(self, part: PartitionKeys, entry_id: str) -> None:
        """This process no longer handles the entry: its slot is free, its keep-alive stops."""
        self.held[part.index].discard(entry_id)
        self.slots.give()

    @contextlib.contextmanager
    def owning(self, part: PartitionKeys, entry_id: str) -> Iterator[None]:
        """Handling one job: an unexpected error leaves it pending (reclaimed after
        RECLAIM_IDLE, dead-lettered after MAX_ATTEMPTS), and its slot is given back."""
        try:
            yield
        except LeavePending:
            pass  # not acknowledged: handed over at shutdown, or reclaimed when idle
        except Exception as exc:
            log.exception("job failed unexpectedly", entry=entry_id)
            sentry.report(exc, entry=entry_id)
        finally:
            self.let_go(part, entry_id)

    async def resume(self, attempt: Attempt, outcome: Exception) -> None:
        """The per-job loop from a read batch's SES outcome on (its claim is still held)."""
        with self.owning(attempt.part, attempt.entry_id):
            await self.send_loop(attempt, outcome)

    # --- one job --------------------------------------------------------------------------

    async def process(self, stream: str, entry_id: str, fields: Any, deliveries: int = 1) -> None:
        """One entry on the per-job path, in a slot its caller took."""
        part = self.part_of[stream]
        with self.owning(part, entry_id):
            try:
                job = Job.from_fields(utf8_fields(fields or {}))
            except ValueError as exc:
                await self.dead_letter(part, entry_id, fields or {}, str(exc)[:500])
                return
            attempt = Attempt(part, entry_id, job, deliveries, accepted_ms(job.msg_id))
            await self.run_attempt(attempt)

    async def dead_letter(
        self, part: PartitionKeys, entry_id: str, fields: dict[str, str], reason: str
    ) -> None:
        """An entry that is not a job: kept with the reason, acknowledged."""
        await self.until_done(
            functools.partial(self.store.dead_letter, part, entry_id, fields, reason)
        )
        metrics.JOBS.labels("dead_letter").inc()
        log.warning("malformed job dead-lettered", entry=entry_id, reason=reason)

    async def run_attempt(self, attempt: Attempt) -> None:
        """Decide what needs no SES; then send, retrying as each outcome says."""
        content = await self.before_claim(lambda: self.check_before_send(attempt))
        if content is None:
            return
        attempt.email = self.compose(self.settings, self.secret, content, attempt.job)
        await self.send_loop(attempt)

    async def check_before_send(self, attempt: Attempt) -> MessageContent | None:
        """Content and pre-check: the content to send, or None when the job is finished here
        (no rate token spent)."""
        attempt.content = await self.contents.get(attempt.part, attempt.job.msg_id)
        scope = attempt.content.unsubscribe_scope if attempt.content else ""
        pre = await self.store.precheck(attempt.part, attempt.job, attempt.topic, scope)
        if pre.state.final:  # a redelivery: never sent again
            await self.store.ack(attempt.part, attempt.entry_id)
            metrics.JOBS.labels("duplicate").inc()
            return None
        verdict = self.verdict(attempt, pre)
        if verdict is None:
            return attempt.content
        await self.finish(attempt, verdict.final, detail=verdict.detail, dead=verdict.dead)
        return None

    def verdict(self, attempt: Attempt, pre: Precheck) -> Verdict | None:
        """The final state a job gets without calling SES, or None: it is to be sent."""
        stopped = pre.stopped(attempt.accepted)
        exhausted = attempt.deliveries > self.settings.max_attempts
        if pre.state.is_inflight:
            if not self.claim_is_dead(pre.state):
                raise LeavePending()  # its sender may be in the middle of it
            attempt.held = pre.state  # a dead sender's claim: recorded over, or taken over
            if self.settings.on_ambiguous == "skip" or stopped or pre.suppressed or exhausted:
                return Verdict(UNKNOWN, "its sender stopped during the SES call")
        if attempt.content is None:
            return Verdict(FAILED_NO_CONTENT, "message content is missing (expired?)")
        if stopped:
            return Verdict(STOPPED)
        if pre.suppressed:
            return Verdict(SUPPRESSED, "address is on the suppression list")
        if exhausted:
            detail = f"delivered {attempt.deliveries} times without a result"
            return Verdict(FAILED_MAX_ATTEMPTS, detail, dead="max_attempts")
        return None

    def claim_is_dead(self, state: DeliveryState) -> bool:
        return state.claim_age_ms(now_ms()) >= self.dead_claim_ms

    async def send_loop(self, attempt: Attempt, handed: Exception | None = None) -> None:
        """Slot, claim, SES call and record, retried as the SES outcome says. `handed`: a read
        batch (`sender.read_batch`) already claimed and sent this job (`attempt.held` is its
        claim) and leaves the outcome it got, an error, to this loop, which goes on exactly as
        after its own SES call."""
        email = attempt.email
        attempt.scopes = scopes_of(email.from_email, email.configuration_set, email.tenant)
        outcome: str | Exception | Step = Step.RETRY if handed is None else handed
        while True:
            if outcome is Step.RETRY:
                outcome = await self.send_once(attempt)
            elif outcome is Step.DONE:
                return
            elif isinstance(outcome, str):
                await self.on_sent(attempt, outcome)
                return
            else:
                self.count_error(outcome, attempt.started)
                outcome = await action_for(outcome)(self, attempt, outcome)

    async def send_once(self, attempt: Attempt) -> str | Exception | Step:
        """One try: a rate slot, the claim, the SES call. Its answer (an SES id or the error),
        or RETRY when the slot was let go, or DONE when the claim decided the job."""
        probing = await self.wait_for_setup(attempt)
        if probing is None:
            return Step.DONE  # parked until its setup resumes
        urgent = attempt.urgent  # transactional mail first
        grant = await self.before_claim(lambda: self.limiter.acquire(self.stop, urgent=urgent))
        if grant is None or self.stop.is_set():
            raise LeavePending()
        if not probing and self.setup.blocking(attempt.scopes):
            return Step.RETRY  # paused while this job waited for its slot: the slot is let go
        if not await self.claim_job(attempt):
            return Step.DONE
        if grant.late():
            # the claim took too long: sending now could bunch with later slots
            metrics.JOBS.labels("late_slot").inc()
            await self.release(attempt)
            return Step.RETRY
        # --- the ambiguous window: claim stored; only the SES call until the record ---
        attempt.started = time.monotonic()
        try:
            return await self.outbox.send(attempt.email)
        except Exception as exc:
            return exc

    async def claim_job(self, attempt: Attempt) -> bool:
        """Claim the job (taking over `held` when it is a dead sender's claim); False when the
        claim decided it instead: final already (acknowledged) or stopped (recorded)."""
        claim = self.claims.next()
        got = await self.until_done(
            functools.partial(
                self.store.claim,
                attempt.part,
                attempt.job,
                attempt.topic,
                claim,
                attempt.accepted,
                attempt.held,
            )
        )
        if got.status == "final":
            await self.until_done(lambda: self.store.ack(attempt.part, attempt.entry_id))
            metrics.JOBS.labels("duplicate").inc()
            return False
        if got.status == "busy":
            raise LeavePending()
        if got.status == "stopped":
            # with a takeover the old claim may have reached SES: unknown, not stopped
            await self.finish(attempt, STOPPED if attempt.held.queued else UNKNOWN)
            return False
        attempt.held = claim
        return True

    # --- SES outcomes (the table `ON_ERROR` maps each error class to its action) -------------

    async def on_sent(self, attempt: Attempt, ses_id: str) -> None:
        metrics.SES_SECONDS.observe(time.monotonic() - attempt.started)
        await self.finish(attempt, DeliveryState.sent(ses_id))
        # a probe (or a send that beat the pause) went through: after the record, so the
        # ambiguous window holds nothing more
        if paused := self.setup.blocking(attempt.scopes):
            await self.best_effort(self.setup_resumed(paused))

    async def on_throttled(self, attempt: Attempt, exc: SesThrottled) -> Step:
        """Release, slow the shared bucket (AIMD), back off; never failed."""
        metrics.JOBS.labels("throttled").inc()
        await self.release(attempt)
        attempt.throttled += 1
        await self.best_effort(self.limiter.throttled())
        await self.pause_job(backoff(min(attempt.throttled, 5)))
        return Step.RETRY

    async def on_account_paused(self, attempt: Attempt, exc: SesError) -> Step:
        """Daily quota, or sending paused / account suspended: release, every replica waits."""
        metrics.JOBS.labels("retried").inc()
        await self.release(attempt)
        await self.account_paused(exc)
        return Step.RETRY

    async def on_setup_fault(self, attempt: Attempt, exc: SesSetupFault) -> Step:
        """Our setup, not this recipient: nothing fails, sending with that setup pauses."""
        metrics.JOBS.labels("setup_paused").inc()
        await self.release(attempt)
        await self.setup_fault(exc, attempt.email)
        return Step.RETRY

    async def on_rejected(self, attempt: Attempt, exc: SesRejected) -> Step:
        await self.finish(
            attempt, DeliveryState.failed(f"rejected:{exc.code}"), detail=str(exc)[:500]
        )
        return Step.DONE

    async def on_transient(self, attempt: Attempt, exc: SesTransient) -> Step:
        """Certainly not sent: retry. A whole call that failed (no connection, a refused
        signature) is never about this recipient: MAX_ATTEMPTS in a row means SES is out of
        reach for us, a setup fault that pauses all sending until a probe gets through."""
        attempt.transient += 1
        metrics.JOBS.labels("retried").inc()
        await self.release(attempt)
        if attempt.transient >= self.settings.max_attempts:
            attempt.transient = 0  # a failed probe waits for the next; it does not pause again
            await self.setup_fault(unreachable(exc), attempt.email)
            return Step.RETRY
        await self.pause_job(backoff(attempt.transient))
        return Step.RETRY

    async def on_entry_transient(self, attempt: Attempt, exc: SesEntryTransient) -> Step:
        """A bulk entry SES answered TRANSIENT_FAILURE is about this job alone: it fails after
        MAX_ATTEMPTS (with a dead letter), pausing nobody."""
        if attempt.transient + 1 < self.settings.max_attempts:
            return await self.on_transient(attempt, exc)
        reason = f"transient:{exc.code}"
        await self.finish(attempt, DeliveryState.failed(reason), detail=str(exc)[:500], dead=reason)
        return Step.DONE

    async def on_ambiguous(self, attempt: Attempt, exc: Exception) -> Step:
        """No answer we can trust: SES may have sent it (an unexpected client error too). Like
        a crash in the window: `unknown`, or with ON_AMBIGUOUS=resend sent again, at least once
        but not for ever (a 5xx that never ends would loop): `unknown` after MAX_ATTEMPTS."""
        attempt.transient += 1
        resend = self.settings.on_ambiguous == "resend"
        if resend and attempt.transient < self.settings.max_attempts:
            metrics.JOBS.labels("retried").inc()
            await self.release(attempt)
            await self.slow_down_on_server_error(exc)
            await self.pause_job(backoff(attempt.transient))
            return Step.RETRY
        await self.finish(attempt, UNKNOWN, detail=f"SES call outcome unknown: {exc}"[:500])
        await self.slow_down_on_server_error(exc)
        return Step.DONE

    # --- the record -------------------------------------------------------------------------

    async def finish(
        self,
        attempt: Attempt,
        final: DeliveryState,
        *,
        detail: str = "",
        dead: str | None = None,
    ) -> Outcome:
        """Record a final state with its event and XACK, retrying through Redis outages."""
        item = self.record_of(attempt, final, detail=detail, dead=dead)
        [outcome] = await self.until_done(lambda: self.store.record_many(attempt.part, [item]))
        self.count_record(item, outcome)
        if outcome.ok:
            metrics.count_setup(attempt.email, str(final.event))
        return outcome

    def record_of(
        self, attempt: Attempt, final: DeliveryState, *, detail: str = "", dead: str | None = None
    ) -> RecordItem:
        """What `record.lua` stores for one job: its final state and event (+ a dead letter
        with reason `dead`), expecting `attempt.held`."""
        job = attempt.job
        ses_id = final.value if final.kind is Kind.SENT else ""
        event = Event(
            type=final.event,
            ts=now_ms(),
            topic=attempt.topic,
            msg_id=job.msg_id,
            index=job.index,
            email=job.email,
            ses_id=ses_id,
            detail=detail,
            reason=final.value if final.kind is Kind.FAILED else "",
        )
        letter = dead_entry(attempt.entry_id, job.fields(), dead) if dead is not None else None
        link = (ses_id, job.request_id) if ses_id else None
        return RecordItem(
            attempt.part, attempt.entry_id, job, attempt.held, final, event, letter, link
        )

    def count_record(self, item: RecordItem, outcome: Outcome) -> None:
        job = item.job
        assert job is not None and item.event is not None
        if outcome.ok:
            metrics.JOBS.labels(str(item.event.type)).inc()
            if item.dead:
                metrics.JOBS.labels("dead_letter").inc()
        elif outcome.status == "final":
            metrics.JOBS.labels("duplicate").inc()
            if item.ses_link:
                # only when another replica judged our claim dead while we were still sending
                log.error(
                    "sent, but the job was already final", rid=job.request_id, state=outcome.value
                )
        else:
            log.warning(
                "job claimed elsewhere; left pending", rid=job.request_id, state=outcome.value
            )

    async def release(self, attempt: Attempt) -> None:
        """Give the claim back (SES did not take the job): it is queued again."""
        claim = attempt.held
        await self.until_done(lambda: self.store.release(attempt.part, attempt.job, claim))
        attempt.held = QUEUED

    async def account_paused(self, exc: SesError) -> None:
        """Every replica waits: the pause lives in the shared limiter."""
        seconds = self.quota_pause_s if isinstance(exc, SesQuotaExceeded) else self.ses_pause_s
        await self.best_effort(self.limiter.pause(seconds))
        if isinstance(exc, SesPaused):
            log.error("SES sending paused; all senders wait", code=exc.code, error=str(exc))
            sentry.report(exc, code=exc.code)
        else:
            log.warning("SES daily quota exhausted; all senders wait", seconds=seconds)

    async def slow_down_on_server_error(self, exc: BaseException) -> None:
        """A 5xx makes its job ambiguous: during an SES outage every call would, so the shared
        rate backs off as for throttling (AIMD, down to 5% within seconds), which bounds how
        many recipients an outage leaves `unknown` (or sends again with resend)."""
        if isinstance(exc, SesError) and exc.status >= 500:
            await self.best_effort(self.limiter.throttled())

    async def wait_for_setup(self, attempt: Attempt) -> bool | None:
        """Wait while a setup this job uses is paused (no claim, no token held): one job per
        paused scope waits in this replica, and the one the cluster lets probe it every
        SETUP_PROBE_INTERVAL goes through (True: this job is that probe). Every other job of the
        scope is parked (None: done here, `sender.parking`), so that it holds no slot."""
        waits_for = ""
        try:
            while blocked := self.setup.blocking(attempt.scopes):
                scope = blocked[0]
                if scope != waits_for:
                    self.parking.done_waiting(waits_for, attempt.entry_id)
                    waits_for = ""
                    if not self.parking.wait_here(scope, attempt.entry_id) and attempt.held.queued:
                        await self.park(attempt, scope)
                        return None
                    waits_for = scope
                probe = functools.partial(self.setup.take_probe, scope)
                if await self.before_claim(probe):
                    log.info("probing a paused SES setup", scope=scope)
                    return True
                await self.pause_job(SETUP_POLL_S)
            return False
        finally:
            self.parking.done_waiting(waits_for, attempt.entry_id)

    async def park(self, attempt: Attempt, scope: str) -> None:
        """Set the job aside until `scope` resumes (its entry acknowledged, its state queued)."""
        park = functools.partial(
            self.parking.park, attempt.part, attempt.entry_id, attempt.job, scope
        )
        if not await self.before_claim(park):
            raise LeavePending()  # another replica took the entry over
        metrics.JOBS.labels("parked").inc()

    async def setup_fault(self, exc: SesSetupFault, email: Any) -> None:
        """Pause the setup `exc` blames, for every replica; alert when this starts the pause."""
        metrics.SETUP_FAULTS.labels(exc.reason).inc()
        scope = scope_of(exc, email.from_email, email.configuration_set, email.tenant)
        started = await self.before_claim(lambda: self.setup.record(scope, exc))
        if started is None:
            log.info("SES setup still broken", scope=scope, code=exc.code)
            return
        log.error(
            "SES setup fault: sending with this setup paused until a probe succeeds",
            scope=scope,
            reason=exc.reason,
            code=exc.code,
            error=exc.message,
            probe_interval=self.settings.setup_probe_interval,
        )
        sentry.report(
            message=f"SES setup fault ({exc.reason}): {scope} paused: {exc}",
            scope=scope,
            code=exc.code,
        )

    async def setup_resumed(self, scopes: list[str]) -> None:
        for scope in await self.setup.resume(scopes):
            log.warning("SES setup works again: sending resumed", scope=scope)
        for scope in scopes:
            await self.parking.unpark(scope)

    async def pause_job(self, seconds: float) -> None:
        """Back off before retrying a job that holds no claim; shutdown abandons it."""
        if await sleep_or_stop(self.stop, seconds):
            raise LeavePending()

    def count_error(self, exc: BaseException, started: float) -> None:
        metrics.SES_SECONDS.observe(time.monotonic() - started)
        metrics.SES_ERRORS.labels(type(exc).__name__).inc()

    # --- Redis outages ----------------------------------------------------------------------

    async def before_claim(self, op: Callable[[], Awaitable[T]]) -> T:
        """Nothing is claimed yet: on an outage wait for Redis, but give up on shutdown."""
        while True:
            try:
                return await op()
            except (*UNAVAILABLE, RedisUnavailable):
                if not await self.wait_for_redis(self.stop):
                    raise LeavePending() from None

    async def until_done(self, op: Callable[[], Awaitable[T]]) -> T:
        """A claim, a release or a record must get an answer: retry until Redis is back (the
        shutdown grace bounds it by cancelling). Every such script is idempotent on retry."""
        while True:
            try:
                return await op()
            except (*UNAVAILABLE, RedisUnavailable):
                await self.wait_for_redis(None)

    async def best_effort(self, op: Awaitable[Any]) -> None:
        try:
            await op
        except (*UNAVAILABLE, RedisUnavailable) as exc:
            log.warning("redis unavailable; skipped a limiter update", error=str(exc))

    def health(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "jobs": sum(len(h) for h in self.held.values()),
            "free_slots": self.slots.free,
        }


# What the per-job loop does with each SES error class, after counting it. A class not listed
# (an unexpected client error too) is looked up by its bases, and ambiguous when none is listed.
Action = Callable[[Sender, Attempt, Any], Awaitable[Step]]
ON_ERROR: dict[type[BaseException], Action] = {
    SesThrottled: Sender.on_throttled,
    SesQuotaExceeded: Sender.on_account_paused,
    SesPaused: Sender.on_account_paused,
    SesSetupFault: Sender.on_setup_fault,
    SesRejected: Sender.on_rejected,
    SesEntryTransient: Sender.on_entry_transient,
    SesTransient: Sender.on_transient,
    SesAmbiguous: Sender.on_ambiguous,
}


def action_for(exc: Exception) -> Action:
    for cls in type(exc).__mro__:
        if cls in ON_ERROR:
            return ON_ERROR[cls]
    return Sender.on_ambiguous

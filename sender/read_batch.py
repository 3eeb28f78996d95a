"""The sender's hot path: the new entries of one XREADGROUP reply go through pre-check, rate
slots, claim, SES and record as one batch, with one task and one call per step for all of them
(from the claim on, one task per grid point of the rate schedule), instead of one task per job
that meets the others in a batcher at every step. Each job is still decided on its own, and
every step keeps its atomicity: the claim is stored before the SES call, the record (final state
+ event + XACK) in one script after it.

Only the common case goes this way: a job delivered for the first time, its content found, no
state stored for it yet, its topic not stopped, its address not suppressed, its SES setup not
paused. Every other job goes to the per-job path (`Sender.process`), which decides it from the
start exactly as before, and so does a job whose rate slot came too late or whose claim was not
granted (its claim released first when it was). A job whose SES call ended in an error other
than a rejection continues on the per-job loop from that outcome (`Sender.resume`), its claim
still held: the ambiguous window is the same as on the per-job path, only the SES call and the
record's round trip between claim and record.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sesflow.common import sentry
from sesflow.common.connection import UNAVAILABLE
from sesflow.common.errors import RedisUnavailable, SesRejected
from sesflow.common.keys import PartitionKeys, accepted_ms
from sesflow.common.logs import get_logger
from sesflow.common.schema import Job, MessageContent
from sesflow.sender import metrics
from sesflow.sender.attempt import Attempt, LeavePending, utf8_fields
from sesflow.sender.rate_limit import Grant, SlotBatch
from sesflow.sender.setup_faults import scopes_of
from sesflow.sender.state import QUEUED, ClaimItem, DeliveryState, Outcome, Precheck, RecordItem

if TYPE_CHECKING:  # the worker runs read batches: only its type is needed here
    from sesflow.sender.worker import Sender

log = get_logger(__name__)


@dataclass(slots=True)
class _Item:
    batch: ReadBatch
    fields: Any  # as read, for the per-job path
    attempt: Attempt  # content, email and scopes set
    claim: DeliveryState = QUEUED  # the claim asked for (`attempt.held` once granted)

    @property
    def entry_id(self) -> str:
        return self.attempt.entry_id


class ReadBatch:
    def __init__(self, sender: Sender, part: PartitionKeys, entries: list[tuple[str, Any]]):
        self.sender = sender
        self.part = part
        self.entries = entries
        # entries this batch still handles (each holds one slot), and those a group task took
        self.owned = {entry_id for entry_id, _ in entries}
        self.grouped: set[str] = set()

    async def run(self) -> None:
        """Prepare every job, then hand each grid point's slots to a group task."""
        try:
            items = await self.prepare()
            if items:
                await self.book(items)
        except LeavePending:
            pass  # stop before any claim: the entries stay pending for the hand-over
        except Exception as exc:
            log.exception("read batch failed unexpectedly", partition=self.part.index)
            sentry.report(exc, partition=self.part.index)
        finally:
            for entry_id in self.owned - self.grouped:
                self.leave(entry_id)

    # --- ownership of the batch's entries -------------------------------------------------

    def leave(self, entry_id: str) -> None:
        """Done with the entry here (recorded, or left pending)."""
        if entry_id in self.owned:
            self.owned.discard(entry_id)
            self.sender.let_go(self.part, entry_id)

    def alone(self, entry_id: str, fields: Any) -> None:
        """The per-job path decides the entry from the start (nothing claimed here)."""
        self.owned.discard(entry_id)
        self.sender.spawn_job(self.part, entry_id, fields, deliveries=1)

    # --- before any claim -------------------------------------------------------------------

    async def prepare(self) -> list[_Item]:
        """Parse, content, one pre-check for all, compose: the jobs that can go together."""
        sender, part = self.sender, self.part
        jobs = self.parse()
        if not jobs:
            return []
        contents: dict[str, MessageContent | None] = {}
        for _, _, job in jobs:
            if job.msg_id not in contents:
                load = functools.partial(sender.contents.get, part, job.msg_id)
                contents[job.msg_id] = await sender.before_claim(load)
        asks = [
            (part, job, self.topic_of(contents[job.msg_id]), self.scope_of(contents[job.msg_id]))
            for _, _, job in jobs
        ]
        prechecks = await sender.before_claim(lambda: sender.store.precheck_many(asks))
        scopes: dict[tuple[str, str, str], tuple[str, ...]] = {}
        items: list[_Item] = []
        accepted: dict[str, int] = {}
        for (entry_id, fields, job), pre in zip(jobs, prechecks, strict=True):
            if job.msg_id not in accepted:
                accepted[job.msg_id] = accepted_ms(job.msg_id)
            attempt = Attempt(part, entry_id, job, 1, accepted[job.msg_id], contents[job.msg_id])
            if self.plain(attempt, pre, scopes):
                items.append(_Item(self, fields, attempt))
            else:
                self.alone(entry_id, fields)
        return items

    def parse(self) -> list[tuple[str, Any, Job]]:
        """The entries that are jobs; the others go to the per-job path (dead-lettered there)."""
        jobs: list[tuple[str, Any, Job]] = []
        for entry_id, fields in self.entries:
            try:
                jobs.append((entry_id, fields, Job.from_fields(utf8_fields(fields or {}))))
            except ValueError:
                self.alone(entry_id, fields)
        return jobs

    def plain(
        self, attempt: Attempt, pre: Precheck, scopes: dict[tuple[str, str, str], tuple[str, ...]]
    ) -> bool:
        """Whether the job is the plain case this path takes (then composed, its setup's scopes
        known, cached in `scopes`); any other goes to the per-job path."""
        sender = self.sender
        if (
            attempt.content is None
            or not pre.state.queued
            or pre.suppressed
            or pre.stopped(attempt.accepted)
            or sender.settings.max_attempts < 1
        ):
            return False
        try:
            email = sender.compose(sender.settings, sender.secret, attempt.content, attempt.job)
        except Exception:
            return False  # fails on the per-job path, with its log line
        setup = (email.from_email, email.configuration_set, email.tenant)
        if setup not in scopes:
            scopes[setup] = scopes_of(*setup)
        if sender.setup.blocking(scopes[setup]):
            return False  # waits for the setup's probe on the per-job path
        attempt.email, attempt.scopes = email, scopes[setup]
        return True

    @staticmethod
    def topic_of(content: MessageContent | None) -> str | None:
        return content.topic if content else None

    @staticmethod
    def scope_of(content: MessageContent | None) -> str:
        return content.unsubscribe_scope if content else ""

    async def book(self, items: list[_Item]) -> None:
        """Rate slots for every job, transactional ones first; each grid point's jobs join
        those of the other batches due at that point (`GridPoints`), and this task ends once
        every job has its slot."""
        lanes: dict[bool, list[_Item]] = {True: [], False: []}
        for item in items:
            lanes[item.attempt.urgent].append(item)
        booking = [self.book_lane(group, urgent=u) for u, group in lanes.items() if group]
        if len(booking) == 1:
            await booking[0]
            return
        # both lanes end before the batch does: it then lets go of what neither grouped
        for failed in await asyncio.gather(*booking, return_exceptions=True):
            if failed is not None:
                raise failed

    async def book_lane(self, items: list[_Item], *, urgent: bool) -> None:
        sender = self.sender
        waiting = items

        def hand(grants: list[Grant]) -> None:
            nonlocal waiting
            group, waiting = waiting[: len(grants)], waiting[len(grants) :]
            self.grouped.update(item.entry_id for item in group)
            sender.grid_points().add(group, grants)

        slots = SlotBatch(len(items), hand, urgent=urgent)
        sender.limiter.want(slots, sender.stop)
        try:
            await slots.finished()  # False: stop, nothing claimed, the rest stays pending
        except (*UNAVAILABLE, RedisUnavailable):
            for item in waiting:  # each waits for Redis on its own, as a lone job does
                self.alone(item.entry_id, item.fields)
        finally:
            slots.close()


class GridPoints:
    """The jobs whose slots fall on one grid point, from every read batch, go on together: one
    claim per partition, one SES call per message (up to 50), one record per call."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._due: list[tuple[_Item, Grant]] = []

    def add(self, items: list[_Item], grants: list[Grant]) -> None:
        if not self._due:
            # after the other batches handed this point's slots in the same loop turn
            asyncio.get_running_loop().call_soon(self._flush)
        self._due += zip(items, grants, strict=True)

    def _flush(self) -> None:
        due, self._due = self._due, []
        if due:
            self.sender.track(self.send_group(due))

    # --- claim, SES, record -----------------------------------------------------------------

    async def send_group(self, due: list[tuple[_Item, Grant]]) -> None:
        sender = self.sender
        try:
            delay = due[0][1].at - time.monotonic()
            if delay > 0:  # handed out a little early (timer resolution): wait for the slot
                await asyncio.sleep(delay)
            if sender.stop.is_set():
                return
            claimed, failure = await self.claim_all(self.still_due(due))
            if claimed:
                await self.call_all(claimed)
            if failure is not None:
                raise failure
        except LeavePending:
            pass
        except Exception as exc:
            log.exception("sending a grid point's jobs failed unexpectedly")
            sentry.report(exc)
        finally:
            for item, _ in due:
                item.batch.leave(item.entry_id)

    def still_due(
        self, due: list[tuple[_Item, Grant]]
    ) -> dict[PartitionKeys, list[tuple[_Item, Grant]]]:
        """The jobs to claim now, per partition, each with its claim value; a late slot or a
        setup paused meanwhile sends a job to the per-job path."""
        sender = self.sender
        ready: dict[PartitionKeys, list[tuple[_Item, Grant]]] = {}
        for item, grant in due:
            if grant.late():
                metrics.JOBS.labels("late_slot").inc()
                item.batch.alone(item.entry_id, item.fields)  # books a new slot there
            elif sender.setup.blocking(item.attempt.scopes):
                item.batch.alone(item.entry_id, item.fields)  # paused meanwhile
            else:
                item.claim = sender.claims.next()
                ready.setdefault(item.batch.part, []).append((item, grant))
        return ready

    async def claim_all(
        self, ready: dict[PartitionKeys, list[tuple[_Item, Grant]]]
    ) -> tuple[list[_Item], Exception | None]:
        """The jobs claimed, and the error of a partition whose claim failed. Every partition's
        claim has ended when this returns: the jobs another partition claimed meanwhile are
        sent, not left with a stored claim (which a reclaim would find ambiguous); the failed
        partition's jobs stay pending."""
        if len(ready) == 1:
            [(part, claiming)] = ready.items()
            return await self.claim(part, claiming), None
        parts = await asyncio.gather(
            *(self.claim(p, c) for p, c in ready.items()), return_exceptions=True
        )
        claimed: list[_Item] = []
        failure: Exception | None = None
        for part_claimed in parts:
            if isinstance(part_claimed, list):
                claimed += part_claimed
            elif isinstance(part_claimed, Exception):
                failure = failure or part_claimed
            else:
                raise part_claimed  # cancelled: so is the group
        return claimed, failure

    async def call_all(self, claimed: list[_Item]) -> None:
        """One SES call per message (per job in SEND_MODE=single), at once."""
        calls = self.sender.outbox.calls([item.attempt.email for item in claimed])
        if len(calls) == 1:
            await self.call(claimed)
            return
        results = await asyncio.gather(
            *(self.call([claimed[n] for n in call]) for call in calls),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def claim(self, part: PartitionKeys, ready: list[tuple[_Item, Grant]]) -> list[_Item]:
        """One claim script call for the jobs of `part`; the jobs claimed in time."""
        sender = self.sender
        claims = []
        for item, _ in ready:
            job, topic, accepted = item.attempt.job, item.attempt.topic, item.attempt.accepted
            claims.append(ClaimItem(part, job, topic, item.claim, accepted, QUEUED))
        answers = await sender.until_done(lambda: sender.store.claim_many(part, claims))
        claimed: list[_Item] = []
        for (item, grant), got in zip(ready, answers, strict=True):
            if got.ok:
                item.attempt.held = item.claim
            if got.ok and grant.late():
                # the claim took too long: sending now could bunch with later slots
                metrics.JOBS.labels("late_slot").inc()
                await sender.release(item.attempt)
                item.batch.alone(item.entry_id, item.fields)
            elif got.ok:
                claimed.append(item)
            elif got.status == "busy":
                item.batch.leave(item.entry_id)  # another sender holds a fresh claim on it
            else:
                # final (a duplicate entry) or stopped: decided there, nothing sent
                item.batch.alone(item.entry_id, item.fields)
        return claimed

    async def call(self, items: list[_Item]) -> None:
        """One SES call, then one record of its results; an error other than a rejection
        continues on the per-job loop from that outcome."""
        sender = self.sender
        part = items[0].batch.part  # one message's jobs: one partition
        # --- the ambiguous window: claims stored; only the SES call until the record ---
        started = time.monotonic()
        outcomes = await sender.outbox.deliver([item.attempt.email for item in items])
        records: list[RecordItem] = []
        recorded: list[Attempt] = []  # the attempt of each record
        sent: list[_Item] = []
        for item, outcome in zip(items, outcomes, strict=True):
            attempt = item.attempt
            attempt.started = started
            if isinstance(outcome, str):
                records.append(sender.record_of(attempt, DeliveryState.sent(outcome)))
                recorded.append(attempt)
                sent.append(item)
            elif isinstance(outcome, SesRejected):
                sender.count_error(outcome, started)
                rejected = DeliveryState.failed(f"rejected:{outcome.code}")
                records.append(sender.record_of(attempt, rejected, detail=str(outcome)[:500]))
                recorded.append(attempt)
            else:
                item.batch.owned.discard(item.entry_id)
                sender.track(sender.resume(attempt, outcome))
        if sent:
            elapsed = time.monotonic() - started
            for _ in sent:
                metrics.SES_SECONDS.observe(elapsed)
        if not records:
            return
        answers = await sender.until_done(lambda: sender.store.record_many(part, records))
        self.count(records, answers, recorded)
        # a probe (or a send that beat the pause) went through: after the record, so the
        # ambiguous window holds nothing more
        for scopes in {item.attempt.scopes for item in sent}:
            if paused := sender.setup.blocking(scopes):
                await sender.best_effort(sender.setup_resumed(paused))

    def count(
        self, records: list[RecordItem], answers: list[Outcome], attempts: list[Attempt]
    ) -> None:
        kinds: Counter[str] = Counter()
        setups: Counter[tuple[str, str, str]] = Counter()  # one call's mail: one or two setups
        for record, answer, attempt in zip(records, answers, attempts, strict=True):
            if answer.ok and record.event is not None and not record.dead:
                kinds[str(record.event.type)] += 1
            else:
                self.sender.count_record(record, answer)
            if answer.ok and record.event is not None and attempt.email is not None:
                email = attempt.email
                setups[(str(record.event.type), email.configuration_set, email.tenant)] += 1
        for kind, n in kinds.items():
            metrics.JOBS.labels(kind).inc(n)
        for (event, configuration_set, tenant), n in setups.items():
            metrics.count_setup_many(event, configuration_set, tenant, n)

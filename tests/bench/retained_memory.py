"""Redis bytes per recipient retained after a campaign is done and its events consumed.

Drives the sender's and the tracker's own Redis code (claim, record with the SES-id link,
feedback with SNS dedupe and first-open marks) for `total` recipients in messages of
`per_message`, with delivery feedback for `delivered_share` of them and a first open for
`opened_share`; then a `stats` group reads and acknowledges every event, both streams are
trimmed as the upkeep trims them, and INFO used_memory after minus before is divided by the
recipients. What is left is what a finished campaign keeps until STATE_RETENTION (CONTENT_TTL)
ends: delivery states, SES-id links, dedupe and first-open marks. Message contents (one hash
per message, not per recipient) are not stored here.

`tagged=True` is a deployment whose feedback comes as configuration-set events carrying the
`sesflow-rid` tag: the tracker has marked it, so the sender writes no SES-id links.

Only APIs that both the current and the previous layout share are used, so the same file
measures either (`before` / `after` in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sesflow.common.keys import SENDERS_GROUP, STATS_GROUP, Keys
from sesflow.common.schema import Event, Job
from sesflow.common.streams import trim_acknowledged
from sesflow.sender.state import ClaimItem, DeliveryState, DeliveryStore, RecordItem
from sesflow.tracker.recorder import EventRecorder, Pending, first_open

RETENTION = 14 * 24 * 3600
BATCH = 500


async def used_memory(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def measure(
    client: Any,
    total: int,
    per_message: int = 10_000,
    delivered_share: float = 0.5,
    opened_share: float = 0.2,
    tagged: bool = False,
) -> float:
    keys = Keys()
    part = keys.partition(0)
    await client.xgroup_create(part.sends, SENDERS_GROUP, id="0", mkstream=True)
    await client.xgroup_create(part.events, STATS_GROUP, id="0", mkstream=True)
    store = DeliveryStore(client, keys, RETENTION)
    if tagged:
        try:  # the sender's link policy, with the tracker's mark of tagged feedback
            from sesflow.sender.ses_links import LinkPolicy
        except ImportError:  # the previous layout: a link for every mail, whatever comes back
            pass
        else:
            await client.set(keys.feedback_tagged, "1")
            store.links = LinkPolicy(client, keys, "auto")
    recorder = EventRecorder(client, RETENTION)
    before = await used_memory(client)
    messages = [f"{1_700_000_000_000 + m}-0" for m in range(max(1, total // per_message))]
    sent: list[tuple[str, int, str]] = []
    for msg_id in messages:
        for start in range(0, per_message, BATCH):
            jobs = [
                Job(msg_id=msg_id, index=i, email=f"r{i}@example.org")
                for i in range(start, min(start + BATCH, per_message))
            ]
            pipe = client.pipeline(transaction=False)
            for job in jobs:
                pipe.xadd(part.sends, job.fields())
            await pipe.execute()
            read = await client.xreadgroup(SENDERS_GROUP, "c1", {part.sends: ">"}, count=BATCH)
            entries = [entry_id for entry_id, _ in read[0][1]]
            claims = [DeliveryState.inflight(1_700_000_000_000 + n, "c1") for n in range(len(jobs))]
            items = [
                ClaimItem(part, job, "bench", claim, 1_700_000_000_000, DeliveryState.parse(""))
                for job, claim in zip(jobs, claims, strict=True)
            ]
            assert all(o.ok for o in await store.claim_many(part, items))
            records = []
            for job, claim, entry_id in zip(jobs, claims, entries, strict=True):
                ses_id = f"0100018c{uuid.uuid4().hex[:8]}-{uuid.uuid4()}-000000"
                event = Event(type="sent", msg_id=msg_id, index=job.index, ses_id=ses_id)
                final = DeliveryState.sent(ses_id)
                link = (ses_id, job.request_id)
                records.append(RecordItem(part, entry_id, job, claim, final, event, None, link))
                sent.append((msg_id, job.index, ses_id))
            assert all(o.ok for o in await store.record_many(part, records))
    await feedback(recorder, part, sent, delivered_share, opened_share)
    await consume(client, part.events)
    await trim_acknowledged(client, part.sends)
    await trim_acknowledged(client, part.events)
    return (await used_memory(client) - before) / len(sent)


async def feedback(
    recorder: EventRecorder, part: Any, sent: list[Any], delivered: float, opened: float
) -> None:
    """Delivery notifications (SNS dedupe) and first opens, as the tracker records them."""
    calls = []
    every_delivery = round(1 / delivered) if delivered else 0
    every_open = round(1 / opened) if opened else 0
    for n, (msg_id, index, ses_id) in enumerate(sent):
        if every_delivery and n % every_delivery == 0:
            event = Event(type="delivered", msg_id=msg_id, index=index, ses_id=ses_id)
            calls.append(
                recorder.record(part, msg_id, [Pending(event)], dedupe_id=str(uuid.uuid4()))
            )
        if every_open and n % every_open == 0:
            event = Event(type="opened", msg_id=msg_id, index=index)
            calls.append(recorder.record(part, msg_id, [Pending(event, first_open(index))]))
        if len(calls) >= 16:
            await asyncio.gather(*calls)
            calls = []
    await asyncio.gather(*calls)


async def consume(client: Any, stream: str) -> None:
    """The `stats` group reads and acknowledges every event."""
    while True:
        read = await client.xreadgroup(STATS_GROUP, "s1", {stream: ">"}, count=5000)
        if not read or not read[0][1]:
            return
        await client.xack(stream, STATS_GROUP, *(entry_id for entry_id, _ in read[0][1]))

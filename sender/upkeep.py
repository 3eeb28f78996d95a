"""Background duties of a sender process, each in its own loop that logs and keeps running:

- keep-alive: XCLAIM ... JUSTID our held entries every RECLAIM_IDLE/3, so a job waiting on the
  limiter, a pause or a backoff never looks idle and is never stolen (JUSTID does not count as a
  delivery);
- reclaim (run by each partition's reader, in slots it holds): XAUTOCLAIM entries idle for
  RECLAIM_IDLE (their consumer died), with their delivery count from XPENDING (MAX_ATTEMPTS is
  judged on it); held back for RECLAIM_IDLE after a Redis outage, when live replicas' entries
  look idle only because their keep-alive could not run (`Sender.reclaim_not_before`);
- trim: XTRIM MINID to the oldest entry still pending for `senders` (or just past the group's
  last-delivered id when nothing is pending), so no pending or undelivered entry is removed;
- forget consumers that hold nothing and have been silent for a long time;
- SES quota: MaxSendRate caps the shared rate; an exhausted daily quota pauses every replica;
- paused setups (`sender.setup_faults`): read every second, so a pause or a resume seen by
  one replica reaches all;
- metrics gauges from the shared bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sesflow.common.connection import UNAVAILABLE
from sesflow.common.errors import RedisUnavailable
from sesflow.common.keys import SENDERS_GROUP, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.streams import trim_acknowledged
from sesflow.sender import metrics
from sesflow.sender.setup_faults import REFRESH_INTERVAL_S as SETUP_REFRESH_INTERVAL_S

if TYPE_CHECKING:
    from sesflow.sender.worker import Sender

log = get_logger(__name__)

TRIM_INTERVAL_S = 10.0
CONSUMERS_INTERVAL_S = 60.0
QUOTA_INTERVAL_S = 60.0
GAUGES_INTERVAL_S = 2.0
# a consumer silent this long (and holding nothing) is gone: live readers block for a second
FORGET_CONSUMER_AFTER_S = 3600.0


async def periodic(
    name: str,
    interval: float,
    step: Callable[[], Awaitable[Any]],
    stop: asyncio.Event,
    wait: Callable[[asyncio.Event], Awaitable[bool]],
) -> None:
    """Run `step` every `interval` seconds until `stop`; errors are logged, never fatal. After a
    Redis outage (`wait` returns) the step runs at once: a keep-alive is overdue by then."""
    while not stop.is_set():
        try:
            await step()
        except (*UNAVAILABLE, RedisUnavailable):
            await wait(stop)
            continue
        except Exception:
            log.exception("upkeep step failed", step=name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def run_upkeep(sender: Sender, stop: asyncio.Event) -> None:
    """All upkeep loops. Keep-alive also runs through the shutdown drain: it is cancelled last."""
    idle = sender.settings.reclaim_idle
    wait = sender.wait_for_redis  # an outage any loop sees holds back this process's reclaim
    draining = asyncio.Event()  # never set: keep-alive runs until cancelled
    loops = [
        periodic("keepalive", idle / 3, lambda: refresh_claims(sender), draining, wait),
        periodic("trim", TRIM_INTERVAL_S, lambda: trim_all(sender), stop, wait),
        periodic("consumers", CONSUMERS_INTERVAL_S, lambda: forget_consumers(sender), stop, wait),
        periodic("gauges", GAUGES_INTERVAL_S, lambda: update_gauges(sender), stop, wait),
        periodic("setup", SETUP_REFRESH_INTERVAL_S, sender.setup.refresh, stop, wait),
    ]
    if sender.fetch_quota is not None:
        loops.append(periodic("quota", QUOTA_INTERVAL_S, lambda: refresh_quota(sender), stop, wait))
    await asyncio.gather(*loops)


async def refresh_claims(sender: Sender) -> None:
    for part in sender.keys.partitions:
        ids = sorted(sender.held[part.index])
        if ids:
            await sender.client.xclaim(
                part.sends, SENDERS_GROUP, sender.consumer, 0, ids, justid=True
            )


async def reclaim(sender: Sender, part: PartitionKeys, count: int) -> int:
    """Take over up to `count` entries idle for RECLAIM_IDLE (their consumer died) and start them
    in slots the caller holds; returns how many slots were used. Called by the partition's
    reader when a pass is due, so reclaiming never waits behind reading for a free slot."""
    min_idle = int(sender.settings.reclaim_idle * 1000)
    cursor = sender.reclaim_cursor[part.index]
    reply = await sender.client.xautoclaim(
        part.sends, SENDERS_GROUP, sender.consumer, min_idle, cursor, count=count
    )
    # the cursor walks the whole pending list across passes, past entries still in use
    sender.reclaim_cursor[part.index] = str(reply[0])
    entries = [(eid, fields) for eid, fields in reply[1] if eid is not None]
    deliveries = await delivery_counts(sender.client, part, [eid for eid, _ in entries])
    for entry_id, fields in entries:
        log.info("reclaimed job", entry=entry_id, deliveries=deliveries.get(entry_id, 1))
        sender.spawn(part, entry_id, fields, deliveries.get(entry_id, 1))
    return len(entries)


async def delivery_counts(client: Any, part: PartitionKeys, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xpending_range(part.sends, SENDERS_GROUP, min=entry_id, max=entry_id, count=1)
    counts: dict[str, int] = {}
    for rows in await pipe.execute():
        for row in rows:
            counts[str(row["message_id"])] = int(row["times_delivered"])
    return counts


async def trim_all(sender: Sender) -> None:
    for part in sender.keys.partitions:
        await trim(sender.client, part)


async def trim(client: Any, part: PartitionKeys) -> int:
    """Remove acknowledged entries only; returns how many were removed."""
    return await trim_acknowledged(client, part.sends)


async def forget_consumers(sender: Sender) -> None:
    limit_ms = FORGET_CONSUMER_AFTER_S * 1000
    for part in sender.keys.partitions:
        for consumer in await sender.client.xinfo_consumers(part.sends, SENDERS_GROUP):
            name = str(consumer["name"])
            if name != sender.consumer and not consumer["pending"] and consumer["idle"] > limit_ms:
                await sender.client.xgroup_delconsumer(part.sends, SENDERS_GROUP, name)


async def refresh_quota(sender: Sender) -> None:
    """SES's own limits, read in a thread (boto3); ignored when SES does not answer."""
    assert sender.fetch_quota is not None
    quota = await sender.fetch_quota(sender.settings)
    if quota is None:
        return
    await sender.limiter.set_ceiling(quota.max_send_rate, valid_s=QUOTA_INTERVAL_S * 3)
    if 0 <= quota.max_24h_send <= quota.sent_last_24h:
        # SES does not say when the rolling window frees up: look again at the next refresh
        await sender.limiter.pause(QUOTA_INTERVAL_S)
        log.warning(
            "SES daily quota exhausted; sending paused",
            max_24h_send=quota.max_24h_send,
            sent_last_24h=quota.sent_last_24h,
        )


async def update_gauges(sender: Sender) -> None:
    status = await sender.limiter.status()
    metrics.BUCKET_TOKENS.set(status.tokens)
    metrics.BUCKET_RATE.set(status.rate)
    metrics.BUCKET_FACTOR.set(status.factor)
    metrics.PAUSED_SECONDS.set(status.paused_s)
    metrics.JOBS_HELD.set(sum(len(h) for h in sender.held.values()))

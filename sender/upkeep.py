"""Background duties of a sender process, each in its own loop that logs and keeps running:

- keep-alive: XCLAIM ... JUSTID our held entries every RECLAIM_IDLE/3, so a job waiting on the
  limiter, a pause or a backoff never looks idle and is never stolen (JUSTID does not count as a
  delivery);
- (reclaim is not here: each partition's reader does it, in slots it holds, `Sender.consume`);
- trim: XTRIM MINID to the oldest entry still pending for `senders` (or just past the group's
  last-delivered id when nothing is pending), so no pending or undelivered entry is removed;
- forget consumers that hold nothing and have been silent for a long time (checked again in the
  same step as the delete, so no pending entry is ever dropped);
- SES quota: MaxSendRate caps the shared rate; an exhausted daily quota pauses every replica;
- paused setups (`sender.setup_faults`): read every second, so a pause or a resume seen by
  one replica reaches all; the parked jobs of a scope no longer paused go back to their
  backlogs in the same step (`sender.parking`);
- metrics gauges from the shared bucket;
- SES's account-level suppression list (SES_SUPPRESSION_SYNC=1): imported into sesflow's every
  SES_SUPPRESSION_SYNC_INTERVAL seconds by whichever replica takes the turn first (a key held
  for the interval, `keys.ses_suppression_sync`), so N replicas still read it once.

They need only a `Replica` (what `sender.worker.Sender` offers them), never the worker module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sesflow.common.aws import Quota
from sesflow.common.connection import UNAVAILABLE
from sesflow.common.consumer import forget_idle_consumers, sleep_or_stop
from sesflow.common.errors import RedisUnavailable
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.ses_suppressions import SesMirrorError, import_from_ses
from sesflow.common.settings import Settings
from sesflow.common.streams import trim_acknowledged
from sesflow.common.suppression import SuppressionList
from sesflow.sender import metrics
from sesflow.sender.parking import Parking
from sesflow.sender.rate_limit import RateLimiter
from sesflow.sender.setup_faults import REFRESH_INTERVAL_S as SETUP_REFRESH_INTERVAL_S
from sesflow.sender.setup_faults import SetupFaults

log = get_logger(__name__)

TRIM_INTERVAL_S = 10.0
CONSUMERS_INTERVAL_S = 60.0
QUOTA_INTERVAL_S = 60.0
SES_SYNC_CHECK_S = 60.0  # how often a replica looks whether the SES import is due
GAUGES_INTERVAL_S = 2.0
# a consumer silent this long (and holding nothing) is taken for gone (`common.consumer`)
FORGET_CONSUMER_AFTER_S = 3600.0


class Replica(Protocol):
    """What the upkeep needs of a sender replica (`sender.worker.Sender` is one)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def client(self) -> Any: ...
    @property
    def keys(self) -> Keys: ...
    @property
    def consumer(self) -> str: ...
    @property
    def limiter(self) -> RateLimiter: ...
    @property
    def setup(self) -> SetupFaults: ...
    @property
    def parking(self) -> Parking: ...
    @property
    def fetch_quota(self) -> Callable[[Settings], Awaitable[Quota | None]] | None: ...
    @property
    def held(self) -> dict[int, set[str]]:
        """Entries being handled, per partition: kept from going idle."""

    async def wait_for_redis(self, stop: asyncio.Event | None) -> bool:
        """Wait until Redis answers (False: `stop` came first); holds back reclaiming."""


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
        await sleep_or_stop(stop, interval)


async def run_upkeep(sender: Replica, stop: asyncio.Event, drained: asyncio.Event) -> None:
    """All upkeep loops. Keep-alive also runs through the shutdown drain: it ends on `drained`.
    Not on cancellation alone: on Python 3.11 a cancellation that lands in a redis-py command can
    be lost (`common.consumer`), and the keep-alive would then run for ever, the process with it."""
    idle = sender.settings.reclaim_idle
    wait = sender.wait_for_redis  # an outage any loop sees holds back this process's reclaim
    loops = [
        periodic("keepalive", idle / 3, lambda: refresh_claims(sender), drained, wait),
        periodic("trim", TRIM_INTERVAL_S, lambda: trim_all(sender), stop, wait),
        periodic("consumers", CONSUMERS_INTERVAL_S, lambda: forget_consumers(sender), stop, wait),
        periodic("gauges", GAUGES_INTERVAL_S, lambda: update_gauges(sender), stop, wait),
        periodic("setup", SETUP_REFRESH_INTERVAL_S, lambda: refresh_setup(sender), stop, wait),
    ]
    if sender.fetch_quota is not None:
        loops.append(periodic("quota", QUOTA_INTERVAL_S, lambda: refresh_quota(sender), stop, wait))
    if sender.settings.ses_suppression_sync:
        every = min(SES_SYNC_CHECK_S, sender.settings.ses_suppression_sync_interval)
        loops.append(periodic("ses-suppressions", every, lambda: sync_ses(sender), stop, wait))
    await asyncio.gather(*loops)


async def refresh_setup(sender: Replica) -> None:
    await sender.setup.refresh()
    await sender.parking.unpark_lifted(set(sender.setup.paused))


async def refresh_claims(sender: Replica) -> None:
    for part in sender.keys.partitions:
        ids = sorted(sender.held[part.index])
        if ids:
            await sender.client.xclaim(
                part.sends, SENDERS_GROUP, sender.consumer, 0, ids, justid=True
            )


async def trim_all(sender: Replica) -> None:
    for part in sender.keys.partitions:
        await trim(sender.client, part)


async def trim(client: Any, part: PartitionKeys) -> int:
    """Remove acknowledged entries only; returns how many were removed."""
    return await trim_acknowledged(client, part.sends)


async def forget_consumers(sender: Replica) -> None:
    for part in sender.keys.partitions:
        await forget_idle_consumers(
            sender.client,
            part.sends,
            SENDERS_GROUP,
            keep=sender.consumer,
            idle_ms=FORGET_CONSUMER_AFTER_S * 1000,
        )


async def refresh_quota(sender: Replica) -> None:
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


async def sync_ses(sender: Replica) -> bool:
    """Import SES's suppression list when this replica takes the interval's turn; True if so."""
    interval_ms = int(sender.settings.ses_suppression_sync_interval * 1000)
    key = sender.keys.ses_suppression_sync
    if not await sender.client.set(key, sender.consumer, nx=True, px=max(1, interval_ms)):
        return False
    try:
        read, added = await import_from_ses(
            sender.settings, SuppressionList(sender.client, sender.keys)
        )
    except SesMirrorError as exc:
        await sender.client.delete(key)  # the next look (any replica) tries again
        log.warning("SES suppression list import failed", error=str(exc))
        return False
    log.info("SES suppression list imported", read=read, added=added)
    return True


async def update_gauges(sender: Replica) -> None:
    status = await sender.limiter.status()
    metrics.BUCKET_TOKENS.set(status.tokens)
    metrics.BUCKET_RATE.set(status.rate)
    metrics.BUCKET_FACTOR.set(status.factor)
    metrics.PAUSED_SECONDS.set(status.paused_s)
    metrics.JOBS_HELD.set(sum(len(h) for h in sender.held.values()))

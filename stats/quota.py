"""The SES sending quota, refreshed in the background so that no request ever waits for SES.

Read once a minute; while someone is looking (the dashboard or an API client asks for it), read
again whenever the answer in hand is older than FRESH_INTERVAL_S, so SentLast24Hours follows a
campaign instead of showing the figure from before it. A request never waits: it gets the answer
in hand and wakes the reader. SES is asked at most once per FRESH_INTERVAL_S, however many ask;
after a failed read, not before RETRY_INTERVAL_S."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sesflow.common.aws import Quota, fetch_quota
from sesflow.common.consumer import wait_at_most
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

QuotaFetcher = Callable[[Settings], Awaitable[Quota | None]]
REFRESH_INTERVAL_S = 60.0
RETRY_INTERVAL_S = 15.0
FRESH_INTERVAL_S = 10.0


class QuotaCache:
    """Holds the last quota SES gave (or None); `run()` refreshes it about once a minute, and
    more often while it is viewed."""

    def __init__(self, settings: Settings, fetcher: QuotaFetcher = fetch_quota) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.quota: Quota | None = None
        self.updated_at: float | None = None  # epoch seconds of the last answer from SES
        self.refreshed = asyncio.Event()  # set after the first attempt, answered or not
        self.attempted_at: float | None = None  # monotonic time of the last attempt
        self._wanted = asyncio.Event()  # a reader asked for a fresher answer

    async def refresh(self) -> Quota | None:
        self.attempted_at = time.monotonic()
        try:
            quota = await self.fetcher(self.settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing SES lookup must never take the API down
            log.warning("SES quota lookup failed", error=str(exc))
            quota = None
        if quota is not None:
            self.quota, self.updated_at = quota, time.time()
        self.refreshed.set()
        return quota

    async def run(self) -> None:
        while True:
            self._wanted.clear()
            if await self.refresh() is None:
                # SES did not answer: asking sooner would not help.
                await asyncio.sleep(RETRY_INTERVAL_S)
                continue
            await asyncio.sleep(FRESH_INTERVAL_S)  # the least time between two questions to SES
            await wait_at_most(self._wanted, REFRESH_INTERVAL_S - FRESH_INTERVAL_S)

    def want_fresh(self) -> None:
        """Ask the reader for a new answer when the one in hand is older than FRESH_INTERVAL_S."""
        last = self.attempted_at
        if last is None or time.monotonic() - last >= FRESH_INTERVAL_S:
            self._wanted.set()

    def view(self) -> dict[str, Any]:
        """SES's numbers (None when SES has not answered), in both naming styles; a view asked
        for wakes the reader when they are getting old."""
        self.want_fresh()
        q = self.quota
        remaining = None
        if q is not None and q.max_24h_send >= 0:
            remaining = max(0.0, q.max_24h_send - q.sent_last_24h)
        return {
            "max_send_rate": q.max_send_rate if q else None,
            "max_24h_send": q.max_24h_send if q else None,
            "sent_last_24h": q.sent_last_24h if q else None,
            "remaining_24h": remaining,
            "quota_source": q.source if q else None,
            "quota_updated_at": self.updated_at,
            "MaxSendRate": q.max_send_rate if q else None,
            "Max24HourSend": q.max_24h_send if q else None,
            "SentLast24Hours": q.sent_last_24h if q else None,
        }

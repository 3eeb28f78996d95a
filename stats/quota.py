"""The SES sending quota, refreshed in the background so that no request ever waits for SES."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sesflow.common.aws import Quota, fetch_quota
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

QuotaFetcher = Callable[[Settings], Awaitable[Quota | None]]
REFRESH_INTERVAL_S = 60.0
RETRY_INTERVAL_S = 15.0


class QuotaCache:
    """Holds the last quota SES gave (or None); `run()` refreshes it about once a minute."""

    def __init__(self, settings: Settings, fetcher: QuotaFetcher = fetch_quota) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.quota: Quota | None = None
        self.updated_at: float | None = None  # epoch seconds of the last answer from SES
        self.refreshed = asyncio.Event()  # set after the first attempt, answered or not

    async def refresh(self) -> Quota | None:
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
            quota = await self.refresh()
            await asyncio.sleep(REFRESH_INTERVAL_S if quota is not None else RETRY_INTERVAL_S)

    def view(self) -> dict[str, Any]:
        """SES's numbers (None when SES has not answered), in both naming styles."""
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

"""Everything the tracker's handlers share, built once per app in `create_app`'s cleanup context."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from sesflow.common.connection import Redis
from sesflow.common.keys import Keys
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList
from sesflow.common.tracking import tracking_secret
from sesflow.tracker.correlation import Correlator
from sesflow.tracker.log_throttle import LogThrottle
from sesflow.tracker.recorder import EventRecorder
from sesflow.tracker.sns import SnsVerifier
from sesflow.tracker.soft_bounces import SoftBounces

log = get_logger(__name__)


class SecretSource:
    """The tracking secret, read once. With TRACKING_SECRET unset it lives in Redis: if Redis is
    down at startup, the tracker still starts and tries again on the next request that needs it."""

    def __init__(self, settings: Settings, client: Redis) -> None:
        self._settings = settings
        self._client = client
        self._secret: bytes | None = settings.tracking_secret.encode() or None

    async def get(self) -> bytes | None:
        if self._secret is None:
            try:
                self._secret = await tracking_secret(self._settings, self._client)
            except (RedisError, OSError) as exc:
                log.warning("tracking secret unavailable", error=str(exc))
        return self._secret


@dataclass(slots=True)
class Tracker:
    settings: Settings
    keys: Keys
    client: Redis
    http: aiohttp.ClientSession
    verifier: SnsVerifier
    correlator: Correlator
    recorder: EventRecorder
    suppressions: SuppressionList
    secret: SecretSource
    refusal_logs: LogThrottle
    soft_bounces: SoftBounces


TRACKER = web.AppKey("tracker", Tracker)

"""`python -m sesflow.sender` / `sesflow serve sender`: one sender replica (run any number of
them)."""

from __future__ import annotations

import asyncio
from typing import Any

from sesflow.common.aws import fetch_quota
from sesflow.common.connection import UNAVAILABLE, Redis, wait_for_redis
from sesflow.common.consumer import consumer_client
from sesflow.common.errors import RedisUnavailable
from sesflow.common.lean_redis import attach, detach
from sesflow.common.logs import get_logger
from sesflow.common.runtime import run_role, start_site, stop_on_signals
from sesflow.common.settings import Settings
from sesflow.common.tracking import tracking_secret
from sesflow.sender.metrics import create_app
from sesflow.sender.ses_boto3 import Boto3SesClient
from sesflow.sender.ses_client import SesClient
from sesflow.sender.worker import Sender

log = get_logger(__name__)


async def load_secret(settings: Settings, client: Redis, stop: asyncio.Event) -> bytes | None:
    while not stop.is_set():
        try:
            return await tracking_secret(settings, client)
        except (*UNAVAILABLE, RedisUnavailable):
            await wait_for_redis(client, stop, log)
    return None


async def serve_metrics(settings: Settings, sender: Sender) -> Any:
    """Metrics are optional: several replicas on one host cannot share the port, and that must
    not keep a replica from sending."""
    try:
        return await start_site(
            create_app(settings, sender.health, client=sender.client),
            settings.bind_host,
            settings.sender_metrics_port,
        )
    except OSError as exc:
        log.warning(
            "metrics endpoint not served", port=settings.sender_metrics_port, error=str(exc)
        )
        return None


def make_ses_client(settings: Settings) -> SesClient | Boto3SesClient:
    """SES_CLIENT picks the send path's client; both raise the same Ses* errors."""
    if settings.ses_client == "boto3":
        return Boto3SesClient(settings, max_connections=settings.sender_concurrency)
    return SesClient(settings, max_connections=settings.sender_concurrency)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    # surrogateescape: an entry on `sends` that is not UTF-8 is dead-lettered as it was
    client = consumer_client(settings)
    # the hot path's script calls, pipelines and reads go on lean connections
    # (common/lean_redis.py); with TLS or Redis Cluster they stay on redis-py
    lane = attach(client, settings, errors="surrogateescape")
    log.info("redis hot path", connection="lean" if lane is not None else "redis-py")
    ses = make_ses_client(settings)
    runner = None
    try:
        secret = await load_secret(settings, client, stop)
        if secret is None:
            return
        sender = Sender(settings, client, ses, secret, fetch_quota=fetch_quota)
        runner = await serve_metrics(settings, sender)
        await sender.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
        await ses.close()
        await detach(client)
        await client.aclose()


def main() -> None:
    run_role("sender", run)


if __name__ == "__main__":
    main()

"""Redis goes away mid-campaign (killed, then restarted with its AOF): nothing exits, no job is
lost or sent twice, the record of a call made just before the outage lands after it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess
from sesflow.common.connection import connect
from sesflow.common.keys import Keys
from sesflow.common.settings import settings_from_mapping
from sesflow.sender.worker import Sender

from support.senderkit import SECRET, FakeSes, Running, queue_jobs, states
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)


async def test_a_redis_outage_mid_campaign_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", extra=("--appendfsync", "always")).start()
    settings = settings_from_mapping(
        {
            "REDIS_URL": server.url,
            "EMAIL_RATE": "200",
            "EMAIL_BURST": "10",
            "SENDER_CONCURRENCY": "4",
            "RECLAIM_IDLE": "2",
            "SHUTDOWN_GRACE": "5",
            "TRACKING_SECRET": "test-tracking-secret",
        }
    )
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    client = connect(settings)
    restarted: list[RedisProcess] = []
    emails = [f"o{n}@example.org" for n in range(30)]
    ses = FakeSes(latency=0.01)

    async def outage(email: Any) -> None:
        if email.to == emails[5] and not restarted:
            server.kill()  # the SES call goes through; recording it will find Redis gone
            restarted.append(server)
            asyncio.get_running_loop().call_later(0.8, restart)

    def restart() -> None:
        restarted.append(RedisProcess(tmp_path / "redis", port=server.port).start())

    ses.hook = outage
    try:
        msg_id, _ = await queue_jobs(admin, KEYS, emails)
        run = Running(Sender(settings, client, ses, SECRET))

        async def done() -> bool:
            try:
                found = await states(admin, PART, msg_id)
            except Exception:
                return False
            return len(found) == len(emails) and all(v.startswith("s") for v in found.values())

        await until(done, within=20)
        await run.stop()
        assert len(restarted) == 2
        assert ses.sent == {e: 1 for e in emails}
        assert await admin.xlen(PART.events) == len(emails)
    finally:
        await client.aclose()
        await admin.aclose()
        for proc in (server, *restarted[1:]):
            proc.stop()

"""`python -m sesflow.stats` as a real process: serves the API and, on SIGTERM, applies the batch
in hand before it exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.exceptions import ResponseError

from sesflow.cli.embedded import free_port
from sesflow.common.keys import ARCHIVE_GROUP, STATS_GROUP, Keys
from sesflow.common.schema import Event

from support.statskit import add_events, counters
from support.until import until

pytestmark = pytest.mark.slow


async def wait_healthy(url: str, proc: asyncio.subprocess.Process, within: float = 20.0) -> None:
    async with aiohttp.ClientSession() as session:

        async def health() -> int:
            assert proc.returncode is None, "stats exited early"
            async with session.get(url + "/health") as res:
                return res.status

        await until(
            health,
            lambda status: status == 200,
            what="stats healthy",
            within=within,
            every=0.1,
            ignore=(aiohttp.ClientError,),
        )


async def test_process_serves_and_flushes_on_sigterm(
    redis: Any, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": redis_url,
        "STATS_PORT": str(port),
        "STATS_FLUSH_INTERVAL": "30",  # only the stop can apply the batch within this test
        "LOG_FORMAT": "json",
        # Keep the SES quota lookup on loopback: a closed port answers at once.
        "SES_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    log = (tmp_path / "sesflow.stats.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sesflow.stats", cwd=tmp_path, env=env, stderr=log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, proc)
        keys = Keys()
        await add_events(redis, keys, *[Event(type="sent", topic="proc") for _ in range(4)])
        for group in (STATS_GROUP, ARCHIVE_GROUP):  # each read them into its batch in hand
            await until(
                partial(redis.xpending, keys.partition(0).events, group),
                lambda pending: pending["pending"] == 4,
                what=f"{group} to read the four events",
                ignore=(ResponseError,),  # NOGROUP until the process creates the group
            )
        assert await redis.hgetall(keys.partition(0).stats_topic("proc")) == {}
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=20)
        assert code == 0, (tmp_path / "sesflow.stats.log").read_text()
        assert (await counters(redis, keys.partition(0).stats_topic("proc")))["sent"] == 4
        # The archive writer (ARCHIVE=on by default, SQLite in the data folder) stored its
        # batch in hand at the stop too.
        with contextlib.closing(sqlite3.connect(tmp_path / ".sesflow" / "archive.db")) as db:
            assert db.execute("SELECT count(*) FROM events WHERE topic = 'proc'").fetchone() == (4,)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()

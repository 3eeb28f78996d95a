"""The sender with its real SES client against the local SES stub: 429s, a paused account, and a
`python -m sesflow.sender` process stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sesflow.cli.embedded import free_port
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.settings import Settings
from sesflow.sender.ses_client import SesClient
from sesflow.sender.worker import Sender

from support.senderkit import SECRET, Running, queue_jobs, states
from support.sesstub import SesStub
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


async def all_sent(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return len(found) == count and all(v.startswith("s") for v in found.values())


async def campaign(
    redis: Any, settings: Settings, stub: SesStub, count: int, pause_s: float = 5.0
) -> None:
    emails = [f"c{n}@example.org" for n in range(count)]
    msg_id, _ = await queue_jobs(redis, KEYS, emails)
    ses = SesClient(settings)
    sender = Sender(settings, redis, ses, SECRET)
    sender.ses_pause_s = pause_s
    run = Running(sender)
    try:
        await until(lambda: all_sent(redis, msg_id, count), within=15)
    finally:
        await run.stop()
        await ses.close()
    assert stub.recipients == {e: 1 for e in emails}
    kinds = {f["e"].split('"type":"')[1].split('"')[0] for _, f in await redis.xrange(PART.events)}
    assert kinds == {"sent"}


async def test_throttled_calls_are_retried_and_the_rate_is_kept(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    async with SesStub(error_rate=0.2, error_status=429) as stub:
        settings = make_settings(
            SES_ENDPOINT_URL=stub.url, EMAIL_RATE="40", EMAIL_BURST="1", **CREDENTIALS
        )
        await campaign(redis, settings, stub, 60)
        assert stub.injected_errors > 0
        # the shared bucket never lets more than EMAIL_RATE (+1 at a second's edge) through
        assert max(stub.per_second.values()) <= 41


async def test_a_paused_account_pauses_sending_and_fails_nothing(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    async with SesStub() as stub:
        stub.configure(pause_seconds=1.0)
        settings = make_settings(SES_ENDPOINT_URL=stub.url, EMAIL_RATE="100", **CREDENTIALS)
        await campaign(redis, settings, stub, 20, pause_s=0.5)
        assert stub.paused_answers >= 1


async def test_sigterm_finishes_in_flight_calls_and_exits_0(
    redis: Any, redis_url: str, tmp_path: Path
) -> None:
    async with SesStub(latency_ms=200) as stub:
        emails = [f"s{n}@example.org" for n in range(200)]
        msg_id, _ = await queue_jobs(redis, KEYS, emails)
        env = {
            **os.environ,
            **CREDENTIALS,
            "REDIS_URL": redis_url,
            "SES_ENDPOINT_URL": stub.url,
            "EMAIL_RATE": "50",
            "SENDER_CONCURRENCY": "16",
            "SENDER_METRICS_PORT": str(free_port()),
            "TRACKING_SECRET": "test-tracking-secret",
            "LOG_FORMAT": "json",
        }
        log_path = tmp_path / "sesflow.sender.log"
        with log_path.open("w") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sesflow.sender", env=env, stderr=log_file
            )
            try:
                await until(lambda: sent_some(stub, 10), within=20)
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert code == 0, log_path.read_text()
        found = await states(redis, PART, msg_id)
        assert found and not any(v.startswith("i:") for v in found.values()), found
        assert stub.sent == len(found) < len(emails)  # each call that reached SES was recorded
        assert all(count == 1 for count in stub.recipients.values())
        rows = await redis.xpending_range(PART.sends, SENDERS_GROUP, "-", "+", 500)
        assert all(r["time_since_delivered"] >= 60_000 for r in rows)  # handed over


async def sent_some(stub: SesStub, count: int) -> bool:
    return stub.sent >= count


async def final(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return len(found) == count and not any(v.startswith("i:") for v in found.values())


async def test_a_502_after_ses_accepted_the_mail_is_unknown_and_never_sent_again(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """A proxy that forwarded the call and then answered 502: SES has the mail, so a retry
    would send it twice. With ON_AMBIGUOUS=skip the recipient is `unknown`, sent once."""
    async with SesStub(accepted_error_status=502) as stub:
        settings = make_settings(
            SES_ENDPOINT_URL=stub.url, EMAIL_RATE="100", MAX_ATTEMPTS="3", **CREDENTIALS
        )
        emails = [f"p{n}@example.org" for n in range(3)]
        msg_id, _ = await queue_jobs(redis, KEYS, emails)
        ses = SesClient(settings)
        run = Running(Sender(settings, redis, ses, SECRET))
        try:
            await until(lambda: final(redis, msg_id, len(emails)), within=15)
        finally:
            await run.stop()
            await ses.close()
        assert set((await states(redis, PART, msg_id)).values()) == {"u"}
        assert stub.recipients == {e: 1 for e in emails}
        kinds = {
            f["e"].split('"type":"')[1].split('"')[0] for _, f in await redis.xrange(PART.events)
        }
        assert kinds == {"unknown"} and await redis.xlen(PART.events) == len(emails)
        assert await redis.xlen(PART.sends_dead) == 0

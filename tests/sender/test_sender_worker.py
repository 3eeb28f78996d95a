"""The sender's job handling, in-process against the real redis-server with a fake SES."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from sesflow.common.consumer import consumer_client
from sesflow.common.day_buckets import day_of
from sesflow.common.errors import (
    SesAmbiguous,
    SesEntryTransient,
    SesPaused,
    SesQuotaExceeded,
    SesRejected,
    SesThrottled,
    SesTransient,
)
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.ses_links import link_lookups
from sesflow.common.suppression import SuppressionList, entry
from sesflow.sender.worker import Sender

from support.senderkit import (
    FakeSes,
    Running,
    events,
    new_msg_id,
    pending_count,
    queue_jobs,
    reasons,
    states,
)
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
EMAILS = [f"user{n}@example.org" for n in range(5)]

Start = Callable[[Sender], Running]


async def all_final(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return len(found) == count and not any(v.startswith("i:") for v in found.values())


async def test_sends_every_recipient_once_and_records_it(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS)
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 5))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert all(v == "s" for v in found.values())
    assert fake_ses.sent == {e: 1 for e in EMAILS}
    sent = [e for e in await events(redis, PART) if e.type == "sent"]
    assert sorted(e.index for e in sent) == list(range(5))
    assert all(e.topic == "t1" and e.ses_id and e.msg_id == msg_id for e in sent)
    # the SES id leads back to the request id, for feedback without tags
    first = sent[0]
    field, [today] = link_lookups(KEYS, first.ses_id, [day_of(time.time())])
    assert await redis.hget(today, field) == f"{msg_id}_{first.index}"
    # the email carries the request id header and tags
    email = fake_ses.emails[0]
    assert ("X-Request-ID", f"{msg_id}_{EMAILS.index(email.to)}") in email.headers
    assert await pending_count(redis, PART) == 0


async def test_redelivered_final_job_is_only_acked(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id = new_msg_id()
    await redis.hset(PART.state(msg_id), mapping={"0": "s:earlier", "1": "f:rejected:x"})
    await queue_jobs(redis, KEYS, EMAILS[:3], msg_id=msg_id)
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 3))
    await until(lambda: pending_count_is(redis, 0))
    await run.stop()
    assert fake_ses.calls == {EMAILS[2]: 1}
    assert (await states(redis, PART, msg_id))[0] == "s:earlier"
    assert [e.index for e in await events(redis, PART)] == [2]


async def pending_count_is(redis: Any, count: int) -> bool:
    return await pending_count(redis, PART) == count


async def test_inflight_from_a_dead_sender_is_unknown_with_skip(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id = new_msg_id()
    await redis.hset(PART.state(msg_id), "0", "i:1000:dead-consumer")
    await queue_jobs(redis, KEYS, EMAILS[:2], msg_id=msg_id)
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 2))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "u"
    assert EMAILS[0] not in fake_ses.calls
    unknown = [e for e in await events(redis, PART) if e.type == "unknown"]
    assert [(e.index, e.email) for e in unknown] == [(0, EMAILS[0])]


async def test_inflight_from_a_dead_sender_is_resent_with_resend(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id = new_msg_id()
    await redis.hset(PART.state(msg_id), "0", "i:1000:dead-consumer")
    await queue_jobs(redis, KEYS, EMAILS[:1], msg_id=msg_id)
    run = running(make_sender(sender_settings(ON_AMBIGUOUS="resend")))
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0].startswith("s")
    assert fake_ses.sent[EMAILS[0]] == 1


async def test_a_fresh_claim_of_a_live_sender_is_left_alone(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """A duplicate entry of a job another sender is sending right now: neither sent nor marked."""
    msg_id = new_msg_id()
    claim = f"i:{new_msg_id().split('-')[0]}:live-consumer"
    await redis.hset(PART.state(msg_id), "0", claim)
    await queue_jobs(redis, KEYS, EMAILS[:2], msg_id=msg_id)
    run = running(make_sender(sender_settings(RECLAIM_IDLE="60")))
    await until(lambda: fake_ses_called(fake_ses, EMAILS[1]))
    await until(lambda: pending_count_is(redis, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == claim
    assert EMAILS[0] not in fake_ses.calls


async def fake_ses_called(fake_ses: FakeSes, email: str) -> bool:
    return fake_ses.sent[email] > 0


async def test_stopped_topic_is_not_sent_and_spends_no_token(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id = new_msg_id(-1000)
    await redis.set(PART.stop("t1"), int(msg_id.split("-")[0]) + 1)
    await queue_jobs(redis, KEYS, EMAILS[:3], msg_id=msg_id)
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 3))
    await run.stop()
    assert set((await states(redis, PART, msg_id)).values()) == {"x"}
    assert not fake_ses.calls
    assert {e.type for e in await events(redis, PART)} == {"stopped"}
    assert not await redis.hexists(KEYS.rate, "tat")  # the limiter was never asked


async def test_suppressed_addresses_including_one_suppressed_after_queueing(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    suppression = SuppressionList(redis, KEYS)
    await suppression.add(entry(EMAILS[0].upper(), "bounce"))
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:3])
    await suppression.add(entry(EMAILS[1], "unsubscribe"))  # its job is already queued
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 3))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert (found[0], found[1]) == ("p", "p")
    assert found[2].startswith("s")
    assert list(fake_ses.calls) == [EMAILS[2]]
    kinds = sorted(e.type for e in await events(redis, PART))
    assert kinds == ["sent", "suppressed", "suppressed"]


async def test_throttling_retries_slows_the_bucket_and_fails_nothing(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    for email in EMAILS[:2]:
        fake_ses.script[email] = [SesThrottled("TooManyRequestsException")] * 2
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:3])
    sender = make_sender(sender_settings())
    run = running(sender)
    await until(lambda: all_final(redis, msg_id, 3))
    await run.stop()
    assert all(v.startswith("s") for v in (await states(redis, PART, msg_id)).values())
    assert fake_ses.calls[EMAILS[0]] == 3 and fake_ses.sent[EMAILS[0]] == 1
    assert {e.type for e in await events(redis, PART)} == {"sent"}
    assert (await sender.limiter.status()).factor < 1.0


async def test_paused_account_pauses_every_sender_and_fails_nothing(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    fake_ses.script[EMAILS[0]] = [SesPaused("SendingPausedException")]
    fake_ses.script[EMAILS[1]] = [SesQuotaExceeded("LimitExceededException")]
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:2])
    sender = make_sender(sender_settings(SENDER_CONCURRENCY="1"))
    run = running(sender)
    await until(lambda: fake_ses_was_called(fake_ses, EMAILS[0]))
    await until(lambda: paused(sender))
    await until(lambda: all_final(redis, msg_id, 2))
    await run.stop()
    assert all(v.startswith("s") for v in (await states(redis, PART, msg_id)).values())
    assert {e.type for e in await events(redis, PART)} == {"sent"}


async def fake_ses_was_called(fake_ses: FakeSes, email: str) -> bool:
    return fake_ses.calls[email] > 0


async def paused(sender: Sender) -> bool:
    return (await sender.limiter.status()).paused_s > 0


async def test_rejected_fails_once_without_retry(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    fake_ses.script[EMAILS[0]] = [SesRejected("MessageRejected", "Email address is not verified")]
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "f" and (await reasons(redis, PART, msg_id))[
        0
    ] == "rejected:MessageRejected"
    assert fake_ses.calls[EMAILS[0]] == 1
    (failed,) = await events(redis, PART)
    assert failed.type == "failed" and "not verified" in failed.detail


async def test_transient_errors_retry_then_pause_sending_and_never_fail_the_recipient(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """SES out of reach is not a bad recipient: after MAX_ATTEMPTS tries in a row all sending
    pauses (a setup fault, `all`) and the next probe that gets through sends it."""
    fake_ses.script[EMAILS[0]] = [SesTransient("ConnectError", "refused")]
    fake_ses.script[EMAILS[1]] = [SesTransient("ConnectError", "refused")] * 3
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:2])
    settings = sender_settings(MAX_ATTEMPTS="3", SETUP_PROBE_INTERVAL="0.3")
    run = running(make_sender(settings))
    await until(lambda: paused_all(redis))
    await until(lambda: all_final(redis, msg_id, 2), within=15)
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert found[0].startswith("s") and found[1].startswith("s")
    assert fake_ses.calls[EMAILS[1]] == 4 and fake_ses.sent[EMAILS[1]] == 1
    assert await redis.xlen(PART.sends_dead) == 0
    assert await redis.hgetall(KEYS.setup_paused) == {}


def setup_faults_of(sender: Any) -> list[Any]:
    """The setup faults `sender` raises from now on, in order (each is still handled)."""
    faults: list[Any] = []
    record = sender.setup_fault

    async def counted(exc: Any, email: Any) -> None:
        faults.append(exc)
        await record(exc, email)

    sender.setup_fault = counted
    return faults


async def test_a_transient_bulk_entry_fails_after_max_attempts_without_pausing_anyone(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """An entry SES answered TRANSIENT_FAILURE counts as its own job's attempts and ends failed
    with a dead letter, as a single send's transient error once did: no `unreachable` pause."""
    entry_error = SesEntryTransient("TRANSIENT_FAILURE", "try later", 200)
    fake_ses.script[EMAILS[1]] = [entry_error] * 3
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:4])
    sender = make_sender(sender_settings(MAX_ATTEMPTS="3", SETUP_PROBE_INTERVAL="0.2"))
    faults = setup_faults_of(sender)
    run = running(sender)
    await until(lambda: all_final(redis, msg_id, 4), within=15)
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert (
        found[1] == "f" and (await reasons(redis, PART, msg_id))[1] == "transient:TRANSIENT_FAILURE"
    )
    assert all(found[n].startswith("s") for n in (0, 2, 3))
    assert fake_ses.bulk_sizes and fake_ses.bulk_sizes[0] == 4
    assert fake_ses.calls[EMAILS[1]] == 3 and fake_ses.sent[EMAILS[1]] == 0
    assert {e: fake_ses.sent[e] for e in (EMAILS[0], EMAILS[2], EMAILS[3])} == dict.fromkeys(
        (EMAILS[0], EMAILS[2], EMAILS[3]), 1
    )
    assert faults == [] and await redis.hgetall(KEYS.setup_paused) == {}
    [(_, dead)] = await redis.xrange(PART.sends_dead)
    assert dead["reason"] == "transient:TRANSIENT_FAILURE" and dead["e"] == EMAILS[1]


async def test_a_job_that_paused_sending_does_not_pause_it_again_on_each_retry(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """After its `unreachable` fault a job counts its tries afresh: a failed probe waits for the
    next one instead of raising the setup fault again."""
    fake_ses.script[EMAILS[0]] = [SesTransient("ConnectError", "refused")] * 3
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    sender = make_sender(sender_settings(MAX_ATTEMPTS="2", SETUP_PROBE_INTERVAL="0.2"))
    faults = setup_faults_of(sender)
    run = running(sender)
    await until(lambda: all_final(redis, msg_id, 1), within=15)
    await run.stop()
    assert (await states(redis, PART, msg_id))[0].startswith("s")
    assert fake_ses.calls[EMAILS[0]] == 4
    assert [f.reason for f in faults] == ["unreachable"]


async def paused_all(redis: Any) -> bool:
    return bool(await redis.hexists(KEYS.setup_paused, "all"))


async def test_ambiguous_is_unknown_with_skip(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    fake_ses.script[EMAILS[0]] = [SesAmbiguous("Timeout", "read timed out")]
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "u"
    assert [e.type for e in await events(redis, PART)] == ["unknown"]


async def test_ambiguous_is_retried_with_resend(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    fake_ses.script[EMAILS[0]] = [SesAmbiguous("Timeout", "read timed out")]
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    run = running(make_sender(sender_settings(ON_AMBIGUOUS="resend")))
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0].startswith("s")
    assert fake_ses.calls[EMAILS[0]] == 2


async def test_resend_gives_up_as_unknown_after_max_attempts_ambiguous_answers(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """A 5xx that never ends must not resend (and maybe send) a job for ever."""
    fake_ses.script[EMAILS[0]] = [SesAmbiguous("HTTP502", "Bad gateway", 502)] * 10
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    run = running(make_sender(sender_settings(ON_AMBIGUOUS="resend", MAX_ATTEMPTS="3")))
    await until(lambda: all_final(redis, msg_id, 1), within=15)
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "u"
    assert fake_ses.calls[EMAILS[0]] == 3


async def test_a_5xx_is_unknown_with_skip_and_slows_the_shared_rate(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    fake_ses.script[EMAILS[0]] = [SesAmbiguous("InternalFailure", "internal error", 500)]
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    sender = make_sender(sender_settings())
    run = running(sender)
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "u"
    assert fake_ses.calls[EMAILS[0]] == 1
    assert (await sender.limiter.status()).factor < 1.0


async def test_malformed_entries_are_dead_lettered_and_the_loop_goes_on(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    await redis.xadd(PART.sends, {"m": "1-0", "i": "not-a-number", "e": "x@example.org"})
    await redis.xadd(PART.sends, {"garbage": "yes"})
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:2])
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 2))
    await until(lambda: pending_count_is(redis, 0))
    await run.stop()
    dead = await redis.xrange(PART.sends_dead)
    assert len(dead) == 2 and all("malformed" in f["reason"] for _, f in dead)
    assert dead[1][1]["garbage"] == "yes"


async def test_an_entry_that_is_not_utf8_is_dead_lettered_as_it_was(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """Bytes that are not UTF-8 once made the whole XREADGROUP reply fail, and the reader task
    ended for good; with the role's own client the entry is a dead letter like any other."""
    settings = sender_settings()
    raw: Any = aioredis.Redis.from_url(settings.redis_url)  # bytes in, bytes out
    poison = {b"m": b"\xff\xfe", b"i": b"0", b"e": b"\xc3\x28@example.org"}
    await raw.xadd(PART.sends, poison)
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:2])
    client = consumer_client(settings)
    try:
        run = running(make_sender(settings, client=client))
        await until(lambda: all_final(redis, msg_id, 2))
        await until(lambda: pending_count_is(redis, 0))
        await run.stop()
    finally:
        await client.aclose()
    ((_, dead),) = await raw.xrange(PART.sends_dead)
    await raw.aclose()
    assert {k: dead[k] for k in poison} == poison
    assert dead[b"reason"].startswith(b"entry is not UTF-8")
    assert fake_ses.sent == {e: 1 for e in EMAILS[:2]}


async def test_missing_content_fails_permanently(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1], store_content=False)
    run = running(make_sender(sender_settings()))
    await until(lambda: all_final(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "f" and (await reasons(redis, PART, msg_id))[
        0
    ] == "no_content"
    assert not fake_ses.calls


async def test_several_partitions_are_all_read(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    keys = Keys("sesflow", 3)
    messages = [
        await queue_jobs(redis, keys, [f"p{n}@example.org"], msg_id=f"{n + 1}000-0")
        for n in range(6)
    ]
    assert len({keys.for_message(m).index for m, _ in messages}) > 1
    run = running(make_sender(sender_settings(SEND_PARTITIONS="3")))
    await until(lambda: fake_ses_count(fake_ses, 6))
    await run.stop()
    for msg_id, _ in messages:
        part = keys.for_message(msg_id)
        assert (await states(redis, part, msg_id))[0] == "s"


async def fake_ses_count(fake_ses: FakeSes, count: int) -> bool:
    return sum(fake_ses.sent.values()) == count


async def test_graceful_stop_finishes_in_flight_calls_and_leaves_nothing_inflight(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start
) -> None:
    ses = FakeSes(latency=0.3)
    emails = [f"g{n}@example.org" for n in range(40)]
    msg_id, _ = await queue_jobs(redis, KEYS, emails)
    sender = make_sender(sender_settings(EMAIL_RATE="20", EMAIL_BURST="4"), ses=ses)
    run = running(sender)
    await until(lambda: fake_ses_calls(ses, 4))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert not any(v.startswith("i:") for v in found.values())
    assert sum(ses.sent.values()) == len(found) >= 4  # every call that started was recorded
    assert all(v.startswith("s") for v in found.values())
    # what was read but not sent is still pending, unclaimed, and handed over: idle enough for
    # another replica's next XAUTOCLAIM
    rows = await redis.xpending_range(PART.sends, SENDERS_GROUP, "-", "+", 100)
    assert rows and all(r["time_since_delivered"] >= 2000 for r in rows)
    assert len(found) + len(rows) <= len(emails)


async def fake_ses_calls(ses: FakeSes, count: int) -> bool:
    return sum(ses.calls.values()) >= count


async def test_a_reader_takes_half_its_share_as_soon_as_it_is_free() -> None:
    """A busy reader (fewer than `least` slots free) waits for more, up to `linger`, and goes as
    soon as it has `least`: it reads ~half its share at a time, not a few jobs per 10 ms."""
    import asyncio

    from sesflow.sender.worker import Slots

    slots = Slots(64)
    assert slots.try_take(60) == 60  # 4 free
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, slots.give, 10)
    loop.call_later(0.1, slots.give, 20)
    loop.call_later(0.15, slots.give, 30)
    started = time.monotonic()
    taken = await slots.take(64, asyncio.Event(), least=32, linger=2.0)
    assert taken == 34  # 4 + 10 + 20: `least` reached
    assert time.monotonic() - started < 1.0  # well before the linger ran out
    # with no more slots coming, the linger bounds the wait
    started = time.monotonic()
    await asyncio.sleep(0.1)
    assert slots.free == 30
    assert await slots.take(64, asyncio.Event(), least=64, linger=0.1) == 30
    assert 0.09 <= time.monotonic() - started - 0.1 < 1.0

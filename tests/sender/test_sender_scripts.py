"""Each Lua script of the sender on its own, against the real redis-server."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from typing import Any

import pytest

from sesflow.common.day_buckets import day_of
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.schema import Event, Job, decode_event, encode
from sesflow.common.scripts import register
from sesflow.common.ses_links import link_lookups
from sesflow.sender.rate_limit import (
    GATHER_MAX_S,
    GATHER_SLOTS,
    HEADROOM,
    LATE_S,
    MAX_RESERVE_MS,
    RateLimiter,
    grid_step,
)
from sesflow.sender.state import DeliveryState, DeliveryStore, RecordItem

S = DeliveryState.parse  # a state by its stored text

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
JOB = Job(msg_id="1700000000000-0", index=3, email="a@example.org")


@pytest.fixture
async def entry(redis: Any) -> str:
    await redis.xgroup_create(PART.sends, SENDERS_GROUP, id="0", mkstream=True)
    entry_id = str(await redis.xadd(PART.sends, JOB.fields()))
    await redis.xreadgroup(SENDERS_GROUP, "c1", {PART.sends: ">"})
    return entry_id


async def claim(redis: Any, value: str, accepted: int = 1700000000000, takeover: str = "") -> Any:
    script = register(redis, "claim")
    job = [1, 2, 3, str(JOB.index), value, accepted, takeover]
    keys = [PART.state(JOB.msg_id), PART.finals(JOB.msg_id), PART.stop("t1")]
    return await script(keys=keys, args=[json.dumps([job])])


async def final_byte(redis: Any, msg_id: str, index: int) -> str:
    return str(await redis.getrange(PART.finals(msg_id), index, index))


async def test_claim_queued_retry_busy_final_and_takeover(redis: Any) -> None:
    assert await claim(redis, "i:1:c1") == ["ok", "i:1:c1"]
    assert await claim(redis, "i:1:c1") == ["ok", "i:1:c1"]  # a retry after a lost reply
    assert await claim(redis, "i:2:c2") == ["busy", "i:1:c1"]
    assert await claim(redis, "i:3:c2", takeover="i:1:c1") == ["ok", "i:3:c2"]
    await redis.hdel(PART.state(JOB.msg_id), JOB.index)
    await redis.setrange(PART.finals(JOB.msg_id), JOB.index, "s")
    assert await claim(redis, "i:4:c2", takeover="i:3:c2") == ["final", "s"]
    assert await redis.exists(PART.state(JOB.msg_id)) == 0


async def test_claim_reads_zero_bytes_and_the_end_of_the_final_string_as_not_final(
    redis: Any,
) -> None:
    await redis.setrange(PART.finals(JOB.msg_id), JOB.index + 2, "x")  # pads JOB's byte with 0
    assert await claim(redis, "i:1:c1") == ["ok", "i:1:c1"]


async def test_claim_sees_the_final_states_an_older_version_wrote(redis: Any) -> None:
    """Before the final strings, final states were hash fields (`s:<ses id>`, `f:<reason>`, `x`):
    they stay final, and the text is answered as it is."""
    for legacy in ("s:abc", "f:rejected:x", "x", "p", "u", "odd"):
        await redis.hset(PART.state(JOB.msg_id), JOB.index, legacy)
        assert await claim(redis, "i:1:c1") == ["final", legacy]


async def test_claim_refuses_a_stopped_topic(redis: Any) -> None:
    await redis.set(PART.stop("t1"), 1700000000000)
    assert await claim(redis, "i:1:c1", accepted=1700000000000) == ["stopped", "1700000000000"]
    assert await redis.hget(PART.state(JOB.msg_id), JOB.index) is None
    # a message accepted after the cancel is not stopped
    assert (await claim(redis, "i:1:c1", accepted=1700000000001))[0] == "ok"


async def test_release_only_our_claim(redis: Any) -> None:
    store = DeliveryStore(redis, KEYS, 60)
    await claim(redis, "i:1:c1")
    assert not await store.release(PART, JOB, S("i:9:other"))
    assert await store.release(PART, JOB, S("i:1:c1"))
    assert await redis.hget(PART.state(JOB.msg_id), JOB.index) is None


async def test_release_gives_back_an_older_senders_claim_too(redis: Any) -> None:
    """Claims have the same form as before: one an older sender wrote is released alike."""
    assert await register(redis, "release")(keys=[PART.state("m")], args=[1, "i:1:c1"]) == 0
    await redis.hset(PART.state("m"), "1", "i:1:c1")
    assert await register(redis, "release")(keys=[PART.state("m")], args=[1, "i:1:c1"]) == 1
    assert await redis.exists(PART.state("m")) == 0


def record_item(entry: str, **kw: Any) -> RecordItem:
    return RecordItem(PART, entry, JOB, **kw)


async def test_record_is_atomic_and_idempotent(redis: Any, entry: str) -> None:
    store = DeliveryStore(redis, KEYS, 60)
    await claim(redis, "i:1:c1")
    event = Event(type="sent", msg_id=JOB.msg_id, index=JOB.index, ses_id="abc")
    item = record_item(entry, expected=S("i:1:c1"), final=DeliveryState.sent("abc"), event=event)
    done = await store.record(item)
    assert (done.status, done.value) == ("ok", "s")
    assert await final_byte(redis, JOB.msg_id, JOB.index) == "s"
    # the claim is gone with its hash: only the final byte remains (and the index's padding)
    assert await redis.exists(PART.state(JOB.msg_id)) == 0
    assert await redis.get(PART.finals(JOB.msg_id)) == "\0\0\0s"
    assert 0 < await redis.ttl(PART.finals(JOB.msg_id)) <= 60
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 0
    # a redelivery records nothing new: one event, state kept
    again = await store.record(record_item(entry, expected=S(""), final=S("u"), event=event))
    assert (again.status, again.value) == ("final", "s")
    assert [decode_event(f["e"]).ses_id for _, f in await redis.xrange(PART.events)] == ["abc"]


async def test_record_keeps_other_claims_and_bounds_their_life(redis: Any, entry: str) -> None:
    await redis.hset(PART.state(JOB.msg_id), mapping={"3": "i:1:c1", "7": "i:2:c2"})
    store = DeliveryStore(redis, KEYS, 60)
    done = await store.record(record_item(entry, expected=S("i:1:c1"), final=S("x")))
    assert done.ok
    assert await redis.hgetall(PART.state(JOB.msg_id)) == {"7": "i:2:c2"}
    assert 0 < await redis.ttl(PART.state(JOB.msg_id)) <= 60


async def test_record_over_an_older_senders_claim_and_state(redis: Any, entry: str) -> None:
    """A job an older sender claimed (then died) is recorded over as before; a final state an
    older version wrote is a redelivery's `final`."""
    store = DeliveryStore(redis, KEYS, 60)
    await redis.hset(PART.state(JOB.msg_id), JOB.index, "i:1000:old-sender")
    done = await store.record(record_item(entry, expected=S("i:1000:old-sender"), final=S("u")))
    assert done.ok and await final_byte(redis, JOB.msg_id, JOB.index) == "u"
    other = Job(msg_id="1700000000002-0", index=0, email="o@example.org")
    await redis.hset(PART.state(other.msg_id), "0", "s:old-ses-id")
    entry2 = str(await redis.xadd(PART.sends, other.fields()))
    await redis.xreadgroup(SENDERS_GROUP, "c1", {PART.sends: ">"})
    again = await store.record(RecordItem(PART, entry2, other, final=S("u")))
    assert (again.status, again.value) == ("final", "s:old-ses-id")
    assert await redis.exists(PART.finals(other.msg_id)) == 0
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 0


async def test_record_leaves_someone_elses_claim(redis: Any, entry: str) -> None:
    store = DeliveryStore(redis, KEYS, 60)
    await claim(redis, "i:1:c1")
    busy = await store.record(record_item(entry, expected=S(""), final=S("x"), event=None))
    assert (busy.status, busy.value) == ("busy", "i:1:c1")
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 1
    assert await redis.xlen(PART.events) == 0
    assert await redis.exists(PART.finals(JOB.msg_id)) == 0


async def test_record_with_dead_letter_and_malformed(redis: Any, entry: str) -> None:
    store = DeliveryStore(redis, KEYS, 0)
    await store.dead_letter(PART, entry, {"junk": "1"}, "malformed job entry")
    dead = await redis.xrange(PART.sends_dead)
    assert dead[0][1]["junk"] == "1"
    assert dead[0][1]["reason"] == "malformed job entry"
    assert dead[0][1]["source_id"] == entry
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 0
    assert await redis.exists(PART.state(""), PART.finals("")) == 0


async def test_claim_several_jobs_in_one_call(redis: Any) -> None:
    """One call, each job decided on its own: queued -> ok, final stays, stopped topic refused."""
    other = Job(msg_id="1700000000001-0", index=0, email="b@example.org")
    await redis.setrange(PART.finals(other.msg_id), 0, "f")
    await redis.set(PART.stop("t2"), 1700000000000)
    script = register(redis, "claim")
    keys = [
        PART.state(JOB.msg_id),
        PART.finals(JOB.msg_id),
        PART.stop("t1"),
        PART.state(other.msg_id),
        PART.finals(other.msg_id),
        PART.stop("t2"),
    ]
    jobs = [
        [1, 2, 3, str(JOB.index), "i:1:c1", 1700000000000, ""],
        [4, 5, 3, "0", "i:1:c1", 1700000000000, ""],
        [1, 2, 6, "9", "i:2:c1", 1700000000000, ""],
    ]
    reply = await script(keys=keys, args=[json.dumps(jobs)])
    assert reply == ["ok", "i:1:c1", "final", "f", "stopped", "1700000000000"]
    assert await redis.hget(PART.state(JOB.msg_id), "9") is None


async def test_results_of_the_same_moment_share_one_record_call(redis: Any) -> None:
    """Three jobs recorded together (one sent with its SES link, one already final, one a
    malformed entry's dead letter): each answer as if alone, every entry acknowledged."""
    import asyncio

    await redis.xgroup_create(PART.sends, SENDERS_GROUP, id="0", mkstream=True)
    jobs = [Job(msg_id="1700000000000-0", index=n, email=f"{n}@example.org") for n in range(2)]
    entries = [str(await redis.xadd(PART.sends, job.fields())) for job in jobs]
    entries.append(str(await redis.xadd(PART.sends, {"junk": "1"})))
    await redis.xreadgroup(SENDERS_GROUP, "c1", {PART.sends: ">"})
    await redis.setrange(PART.finals(jobs[1].msg_id), 1, "f")
    store = DeliveryStore(redis, KEYS, 60)
    calls = 0
    original = store._record_many

    async def counted(key: Any, items: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(key, items)

    store._records._run = counted
    event = Event(type="sent", msg_id=jobs[0].msg_id, index=0, ses_id="ses0")
    sent, final, dead = await asyncio.gather(
        store.record(
            RecordItem(
                PART, entries[0], jobs[0], final=S("s:ses0"), event=event, ses_link=("ses0", "r0")
            )
        ),
        store.record(RecordItem(PART, entries[1], jobs[1], final=S("s:ses1"), event=event)),
        store.dead_letter(PART, entries[2], {"junk": "1"}, "malformed"),
    )
    assert calls == 1
    assert sent.ok and (final.status, final.value) == ("final", "f") and dead is None
    assert await redis.get(PART.finals(jobs[0].msg_id)) == "sf"
    assert await linked(redis, "ses0") == "r0"
    assert await redis.xlen(PART.events) == 1
    assert [f["reason"] for _, f in await redis.xrange(PART.sends_dead)] == ["malformed"]
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 0


async def linked(redis: Any, ses_id: str) -> str | None:
    """The request id linked to `ses_id` today, as the tracker finds it."""
    field, [key] = link_lookups(KEYS, ses_id, [day_of(time.time())])
    value: str | None = await redis.hget(key, field)
    return value


async def test_jobs_prechecked_together_each_get_their_own_answer(redis: Any) -> None:
    """One pipeline for a batch: states per message, stop per topic, suppression per address."""
    import asyncio

    other = Job(msg_id="1700000000001-0", index=0, email="B@example.org ")
    second = Job(msg_id=JOB.msg_id, index=4, email="c@example.org")
    far = Job(msg_id=JOB.msg_id, index=5000, email="d@example.org")
    legacy = Job(msg_id=JOB.msg_id, index=6, email="e@example.org")
    await redis.setrange(PART.finals(JOB.msg_id), 4, "s")
    await redis.setrange(PART.finals(JOB.msg_id), 5000, "p")
    await redis.hset(PART.state(JOB.msg_id), "6", "f:older")
    await redis.hset(PART.state(other.msg_id), mapping={"0": "i:5:c9"})
    await redis.set(PART.stop("t2"), 1700000000000)
    await redis.hset(KEYS.suppressed, "b@example.org", '{"reason":"bounce"}')
    store = DeliveryStore(redis, KEYS, 60)
    first, two, three, four, five, six = await asyncio.gather(
        store.precheck(PART, JOB, "t1"),
        store.precheck(PART, second, "t1"),
        store.precheck(PART, other, "t2"),
        store.precheck(PART, JOB, None),
        store.precheck(PART, far, "t1"),
        store.precheck(PART, legacy, "t1"),
    )
    assert (first.state, first.stop_ms, first.suppressed) == (S(""), None, False)
    assert (two.state, two.stop_ms, two.suppressed) == (S("s"), None, False)
    assert (three.state, three.stop_ms, three.suppressed) == (S("i:5:c9"), 1700000000000, True)
    assert four == first
    assert five.state == S("p") and five.state.final
    assert six.state == S("f:older") and six.state.final


async def test_the_precheck_applies_list_unsubscribes_to_bulk_mail_only(redis: Any) -> None:
    """Bulk jobs ask with their list: an address that left it (or every list) is suppressed;
    a transactional job (scope "") sees only the global list. One round trip for all."""
    import asyncio

    left = Job(msg_id=JOB.msg_id, index=5, email="Left@example.org")
    everywhere = Job(msg_id=JOB.msg_id, index=6, email="all@example.org")
    await redis.delete(KEYS.unsubscribed)
    await redis.hset(KEYS.unsubscribed, "left@example.org", '{"newsletter":{"ts":1}}')
    await redis.hset(KEYS.unsubscribed, "all@example.org", '{"*":{"ts":1}}')
    store = DeliveryStore(redis, KEYS, 60)
    answers = await asyncio.gather(
        store.precheck(PART, left, "t1", "newsletter"),
        store.precheck(PART, left, "t1", "offers"),
        store.precheck(PART, left, "t1", ""),
        store.precheck(PART, everywhere, "t1", "offers"),
        store.precheck(PART, everywhere, "t1", ""),
    )
    assert [a.suppressed for a in answers] == [True, False, False, True, False]


async def test_ses_links_sets_every_link_with_its_expiry(redis: Any) -> None:
    links = register(redis, "ses_links")
    at = int(time.time()) + 60
    keys = [KEYS.ses_links(1, 1), KEYS.ses_links(1, 2)]
    blob = b"\0\x01\x00\x01digest" + b"m_0\0" + b"\0\x02digest\xff\xfe" + b"m_1\0"
    args = [at, blob + b"\0\x01" + b"f2......" + b"m_2\0"]
    assert await links(keys=keys, args=args) == 3
    assert await redis.hgetall(keys[0]) == {"\x00\x01digest": "m_0", "f2......": "m_2"}
    assert await redis.hget(keys[1], b"digest\xff\xfe") == "m_1"
    assert 0 < await redis.ttl(keys[1]) <= 60
    assert await redis.object("encoding", keys[0]) in ("listpack", "ziplist")  # 7.x, 6.x


async def test_links_are_written_only_as_the_policy_says(redis: Any, entry: str) -> None:
    """auto: links until the tracker has seen tagged feedback and no untagged feedback."""
    from sesflow.sender.ses_links import LinkPolicy

    assert await LinkPolicy(redis, KEYS, "auto").wanted()  # nothing seen yet
    await redis.set(KEYS.feedback_tagged, "1")
    assert not await LinkPolicy(redis, KEYS, "auto").wanted()
    assert await LinkPolicy(redis, KEYS, "always").wanted()
    store = DeliveryStore(redis, KEYS, 60, links=LinkPolicy(redis, KEYS, "auto"))
    event = Event(type="sent", msg_id=JOB.msg_id, index=JOB.index, ses_id="abc")
    item = record_item(entry, final=S("s:abc"), event=event, ses_link=("abc", "r"))
    assert (await store.record(item)).ok
    assert await linked(redis, "abc") is None
    await redis.set(KEYS.feedback_untagged, "1")
    assert await LinkPolicy(redis, KEYS, "auto").wanted()
    assert not await LinkPolicy(redis, KEYS, "never").wanted()


async def test_a_sent_result_is_recorded_once_when_redis_forgot_the_scripts(
    redis: Any, entry: str
) -> None:
    """NOSCRIPT on one script of the pipeline (e.g. the links script not loaded yet, after a
    restart) runs that one again, and only that one: the job is recorded `ok`, not `final`."""
    store = DeliveryStore(redis, KEYS, 60)
    await store.record(
        RecordItem(PART, "0-1", None)
    )  # loads record.lua (an unknown entry: XACK only)
    await claim(redis, "i:1:c1")
    event = Event(type="sent", msg_id=JOB.msg_id, index=JOB.index, ses_id="abc")
    done = await store.record(
        record_item(
            entry, expected=S("i:1:c1"), final=S("s:abc"), event=event, ses_link=("abc", "r")
        )
    )
    assert (done.status, done.value) == ("ok", "s")
    assert await linked(redis, "abc") == "r"
    assert await redis.xlen(PART.events) == 1
    await redis.script_flush()
    await redis.setrange(PART.finals(JOB.msg_id), JOB.index, "\0")
    again = await store.record(
        RecordItem(PART, entry, JOB, final=S("s:def"), event=event, ses_link=("d", "r"))
    )
    assert again.ok and await linked(redis, "d") == "r"


# --- the rate limiter (simulated time through the documented `now` test argument) ---------------


def limiter(redis: Any, make_settings: Any, **env: Any) -> RateLimiter:
    return RateLimiter(redis, make_settings(**env), KEYS)


async def drive(rl: RateLimiter, seconds: float, start: float = 1e12) -> list[float]:
    """Callers that always ask again when told: the simulated times at which sends happen."""
    now, sends = start, []
    while now < start + seconds * 1000:
        granted, wait = await rl.try_acquire(now_ms=now)
        if granted:
            sends.append(now + wait * 1000)
            now += wait * 1000 if wait else 0.0
        else:
            now += max(wait * 1000, 1.0)
    return sends


async def test_gcra_grants_at_the_configured_rate(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="20", EMAIL_BURST="1")
    sends = await drive(rl, 2.0)
    assert 39 <= len(sends) <= 41
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert min(gaps) >= 50  # never two within one interval (in whole ms)


async def test_burst_then_rate(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="10", EMAIL_BURST="5")
    now = 1e12
    grants = [await rl.try_acquire(now_ms=now) for _ in range(6)]
    assert [g for g, _ in grants] == [True] * 6
    assert [w for _, w in grants[:5]] == [0.0] * 5
    # the sixth is a reservation one interval ahead (ms, rounded up)
    assert grants[5][1] == pytest.approx(0.1 / HEADROOM, abs=0.001)
    status = await rl.status(now_ms=now)
    assert status.tokens == 0 and status.rate == pytest.approx(10 * HEADROOM)


async def test_reservations_are_capped(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="10", EMAIL_BURST="1")
    now = 1e12
    results = [await rl.try_acquire(now_ms=now) for _ in range(10)]
    granted = [w for g, w in results if g]
    # now, then one per interval up to MAX_RESERVE_MS ahead, never beyond
    interval_ms = 100 / HEADROOM
    assert len(granted) == 1 + int(MAX_RESERVE_MS // interval_ms)
    assert max(granted) * 1000 <= MAX_RESERVE_MS
    refused = [w for g, w in results if not g]
    # refused: ask again once the next slot is within reach (at most one interval later)
    assert refused and all(0 < w <= interval_ms / 1000 + 0.001 for w in refused)


async def test_aimd_decrease_cooldown_floor_and_recovery(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="100")
    now = 1e12
    assert await rl.throttled(now_ms=now) == pytest.approx(0.7)
    # within the cooldown: no second decrease (only 10 ms of recovery)
    assert await rl.throttled(now_ms=now + 10) == pytest.approx(0.7, abs=0.01)
    assert (await rl.status(now_ms=now)).rate == pytest.approx(70 * HEADROOM)
    factor = 1.0
    for step in range(1, 30):
        factor = await rl.throttled(now_ms=now + step * 1000)
    # one report per second settles where the decrease meets a second of recovery:
    # f = 0.7 * (f + 0.2)  ->  f = 0.467
    assert factor == pytest.approx(0.14 / 0.3, abs=0.01)
    # additive recovery: +0.2 per second back to 1.0
    later = await rl.status(now_ms=now + 29 * 1000 + 10_000)
    assert later.factor == 1.0 and later.rate == pytest.approx(100 * HEADROOM)


async def test_aimd_floor(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="100")
    now = 1e12
    # a report per cooldown with no time to recover (the factor's timestamp is moved to the
    # next report): decreases down to the 5 % floor, not below
    for step in range(40):
        await rl.throttled(now_ms=now + step * 1000.0)
        await redis.hset(KEYS.rate, "fts", str(now + step * 1000.0 + 1000))
    status = await rl.status(now_ms=now + 40 * 1000)
    assert status.factor == pytest.approx(0.05)
    assert status.rate == pytest.approx(5 * HEADROOM)


async def test_pause_stops_everyone_and_only_extends(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="100", EMAIL_BURST="10")
    now = 1e12
    await rl.pause(5, now_ms=now)
    await rl.pause(1, now_ms=now)  # shorter: ignored
    granted, wait = await rl.try_acquire(now_ms=now + 1000)
    assert not granted and wait == pytest.approx(4.0)
    assert (await rl.status(now_ms=now + 1000)).paused_s == pytest.approx(4.0)
    assert (await rl.try_acquire(now_ms=now + 5001))[0]


async def test_ses_ceiling_lowers_the_rate_while_valid(redis: Any, make_settings: Any) -> None:
    rl = limiter(redis, make_settings, EMAIL_RATE="100")
    now = 1e12
    await rl.set_ceiling(14, valid_s=60, now_ms=now)
    assert (await rl.status(now_ms=now)).rate == pytest.approx(14 * HEADROOM)
    assert (await rl.status(now_ms=now + 61_000)).rate == pytest.approx(100 * HEADROOM)
    await rl.set_ceiling(500, valid_s=60, now_ms=now)  # higher than EMAIL_RATE: no effect
    assert (await rl.status(now_ms=now)).rate == pytest.approx(100 * HEADROOM)


async def test_real_time_acquire_respects_the_rate(redis: Any, make_settings: Any) -> None:
    """With Redis TIME: 15 tokens at 50/s with a burst of 5 need at least (15-5)/50 s."""
    import time

    rl = limiter(redis, make_settings, EMAIL_RATE="50", EMAIL_BURST="5")
    started = time.monotonic()
    for _ in range(15):
        assert await rl.acquire()
    assert time.monotonic() - started >= 0.19


def test_event_encoding_is_compact() -> None:
    assert b'"type":"sent"' in encode(Event(type="sent"))


async def test_one_call_grants_consecutive_slots(redis: Any, make_settings: Any) -> None:
    """Several waiting jobs of a process take their slots in one call: count, first slot and
    the interval."""
    rl = limiter(redis, make_settings, EMAIL_RATE="10", EMAIL_BURST="2")
    now = 1e12
    count, first, interval, at = (float(x) for x in await rl.grant(20, now_ms=now))
    assert at == now  # Redis's clock, on which the send grid is laid
    interval_ms = 100 / HEADROOM
    assert interval == pytest.approx(interval_ms)
    # two of burst credit (the first one interval in the past), then one per interval up to
    # MAX_RESERVE_MS ahead
    assert first == pytest.approx(-interval_ms)
    assert count == 2 + int(MAX_RESERVE_MS // interval_ms)
    refused = await rl.grant(5, now_ms=now)
    assert int(refused[0]) == 0 and 0 < int(refused[1]) <= interval_ms + 1
    # fewer wanted than fit: only those are booked
    later = now + 10_000
    for expected_first in (-interval_ms, 0.0):
        count, first, _, _ = (float(x) for x in await rl.grant(1, now_ms=later))
        assert count == 1
        assert first == pytest.approx(expected_first, abs=0.1)


async def test_a_late_slot_is_dropped_not_bunched(redis: Any, make_settings: Any) -> None:
    """A job that wakes up after its slot's tolerance asks for another slot instead of sending."""
    import asyncio

    from sesflow.sender.rate_limit import Grant

    rl = limiter(redis, make_settings, EMAIL_RATE="200", EMAIL_BURST="1")
    assert not Grant(time.monotonic(), 0.01).late()
    assert Grant(time.monotonic() - 0.05, 0.01).late()
    grants = [g for g in await asyncio.gather(*(rl.acquire() for _ in range(20))) if g]
    assert len(grants) == 20
    # reserved slots go on the grid, together: never more than one step's worth
    step = grid_step(1 / (200 * HEADROOM))
    steps = Counter(g.at for g in grants if g.tolerance == LATE_S)
    assert steps and max(steps.values()) <= math.ceil(200 * step) + 1
    first = min(steps)
    assert all(abs((at - first) / step - round((at - first) / step)) < 1e-3 for at in steps)
    # a reservation (a future slot: the schedule is full) is held to LATE_S
    assert min(g.tolerance for g in grants) == LATE_S


async def test_a_job_woken_too_late_books_a_new_slot(
    redis: Any, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stall longer than LATE_S past a reserved slot: that slot is not used, the job takes the
    next one, and the drop is counted (sesflow_sends_total{outcome="late_slot"})."""

    from sesflow.sender import metrics, rate_limit

    rl = limiter(redis, make_settings, EMAIL_RATE="20", EMAIL_BURST="1")
    assert await rl.acquire()  # the burst token: the next one is a reservation
    real_hand_out = rate_limit._hand_out
    stalls = [0.1]

    def stalled_hand_out(grants: Any) -> None:
        time.sleep(stalls.pop() if stalls else 0.0)  # the process stalls once, at the slot
        real_hand_out(grants)

    monkeypatch.setattr(rate_limit, "_hand_out", stalled_hand_out)  # the slot's wake-up
    before = metrics.JOBS.labels("late_slot")._value.get()
    grant = await rl.acquire()
    assert grant is not None and not grant.late()
    assert metrics.JOBS.labels("late_slot")._value.get() == before + 1


async def test_the_jobs_of_a_grid_point_wake_once_at_their_slot(
    redis: Any, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reserved slots are handed out at their time by one timer per grid point: a waiting job
    wakes once, at its slot, rather than on the grant and again after a sleep of its own."""
    import asyncio

    rl = limiter(redis, make_settings, EMAIL_RATE="200", EMAIL_BURST="1")
    real_sleep = asyncio.sleep
    sleeps: list[float] = []

    async def counted_sleep(delay: float, *args: Any) -> Any:
        sleeps.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counted_sleep)
    grants = [g for g in await asyncio.gather(*(rl.acquire() for _ in range(20))) if g]
    woke = time.monotonic()
    assert len(grants) == 20
    assert [d for d in sleeps if d > 0.001] == []  # nobody slept until its own slot
    assert all(g.at <= woke + 0.001 for g in grants)  # and nobody was handed a slot early


@pytest.mark.parametrize("rate", [1, 20, 200, 500, 531, 533, 600, 1000, 4000, 20000, 1e6])
def test_the_grid_step_keeps_every_window_within_the_bound(rate: float) -> None:
    """Sends go within LATE_S after a grid point, each point with one step of slots, so a 1-s
    window holds the points of a (1 + LATE_S)-s span: a whole number of steps of the rate, at
    most (1 + LATE_S) x rate x HEADROOM, no step over a full bulk call, and no point's call over
    a tenth of a second of the rate even after a late point."""
    interval = 1 / (rate * HEADROOM)
    step = grid_step(interval)
    points = (1 + LATE_S) / step
    assert abs(points - round(points)) < 1e-6
    assert step <= GATHER_MAX_S + 1e-12 and step <= GATHER_SLOTS * interval + 1e-12
    assert step >= min(GATHER_MAX_S, GATHER_SLOTS * interval) * (1 - 1 / points) - 1e-12
    assert step + LATE_S <= 0.1 + 1e-12  # a point's call: a tenth of a second of the rate


def test_the_documented_window_bounds_hold() -> None:
    """The bounds the docs give (guarantees.md, Rate): +1.5% from the grid, +3% with borrows."""
    from sesflow.sender.rate_limit import BORROW_SHARE

    assert HEADROOM * (1 + LATE_S) <= 1.015
    assert HEADROOM * (1 + LATE_S) + BORROW_SHARE <= 1.03


async def test_a_grid_step_at_500_per_second_fills_a_bulk_call(
    redis: Any, make_settings: Any
) -> None:
    """At EMAIL_RATE=500 one step of the grid holds ~39 recipients: one SES call, one claim
    and one record for them."""
    import asyncio

    rl = limiter(redis, make_settings, EMAIL_RATE="500", EMAIL_BURST="1")
    grants = [g for g in await asyncio.gather(*(rl.acquire() for _ in range(150))) if g]
    assert len(grants) == 150
    steps = Counter(g.at for g in grants if g.tolerance == LATE_S)
    step = grid_step(1 / (500 * HEADROOM))
    assert max(steps.values()) >= 37
    assert max(steps.values()) <= math.ceil(500 * step) + 1


async def test_every_replica_sends_on_the_same_grid(redis: Any, make_settings: Any) -> None:
    """The grid is laid on Redis's clock: two replicas' grid points coincide, so a window
    cannot hold one more step of the rate for each replica's own phase."""
    import asyncio

    one = limiter(redis, make_settings, EMAIL_RATE="200", EMAIL_BURST="1")
    two = limiter(redis, make_settings, EMAIL_RATE="200", EMAIL_BURST="1")
    grants = await asyncio.gather(*(rl.acquire() for rl in (one, two) for _ in range(30)))
    points = sorted({g.at for g in grants if g is not None and g.tolerance == LATE_S})
    step = grid_step(1 / (200 * HEADROOM))
    assert len(points) >= 3
    # timed from when each asked: within a round trip, not a fraction of a step apart
    assert all(abs((b - a) / step - round((b - a) / step)) < 0.02 for a in points for b in points)


async def test_transactional_wants_take_the_next_slots(redis: Any, make_settings: Any) -> None:
    """Slots already booked for bulk mail go to an urgent want that comes later, at the next
    grid point; the bulk jobs take the slots booked after, and every job gets one."""
    import asyncio

    from sesflow.sender.rate_limit import SlotBatch

    rl = limiter(redis, make_settings, EMAIL_RATE="100", EMAIL_BURST="1")
    bulk_points: list[float] = []
    bulk = SlotBatch(60, lambda grants: bulk_points.extend(g.at for g in grants))
    rl.want(bulk)
    await asyncio.sleep(0.05)  # the bulk batch's slots are booked: half a second of them
    assert rl.booked >= 40
    asked = time.monotonic()
    urgent = await asyncio.wait_for(rl.acquire(urgent=True), 5)
    assert urgent is not None
    assert urgent.at - asked <= grid_step(1 / (100 * HEADROOM)) + 0.01  # the next point
    assert await asyncio.wait_for(bulk.finished(), 10) is True
    assert len(bulk_points) == 60
    assert sum(1 for at in bulk_points if at > urgent.at) >= 40  # booked before, sent after


async def test_a_read_batch_gets_its_slots_once_per_grid_point(
    redis: Any, make_settings: Any
) -> None:
    """A SlotBatch (the jobs of one read) waits for all its slots in one want: each grid point's
    grants reach it in one hand-out, all with that point's time, and finished() says when every
    slot was handed (sender.read_batch then claims each point's jobs together)."""
    import asyncio

    from sesflow.sender.rate_limit import SlotBatch

    rl = limiter(redis, make_settings, EMAIL_RATE="500", EMAIL_BURST="1")
    handed: list[list[Any]] = []
    slots = SlotBatch(40, handed.append)
    rl.want(slots)
    assert await asyncio.wait_for(slots.finished(), 10) is True
    assert sum(len(grants) for grants in handed) == 40
    assert all(len({g.at for g in grants}) == 1 for grants in handed)  # one point per hand-out
    points = [grants[0].at for grants in handed]
    assert points == sorted(set(points))  # each point once, in order
    assert len(handed) < 40  # jobs of a point go together, not one wake-up each


async def test_a_closed_slot_batch_is_handed_nothing_more(redis: Any, make_settings: Any) -> None:
    """A read batch that ended (stop, cancellation) closes its want: the poller skips it."""
    import asyncio

    from sesflow.sender.rate_limit import SlotBatch

    rl = limiter(redis, make_settings, EMAIL_RATE="20", EMAIL_BURST="1")
    handed: list[list[Any]] = []
    slots = SlotBatch(5, handed.append)
    slots.close()
    rl.want(slots)
    assert await rl.acquire() is not None  # the poller ran and served the next caller
    await asyncio.sleep(0.3)
    assert handed == []


async def test_an_urgent_slot_is_borrowed_from_a_full_schedule(
    redis: Any, make_settings: Any
) -> None:
    """Another replica booked the schedule ahead: an urgent want borrows a slot allowed at
    once, which pushes the schedule one slot later; the borrowing budget then runs dry."""
    from sesflow.sender.rate_limit import BORROW_SHARE

    rl = limiter(redis, make_settings, EMAIL_RATE="100", EMAIL_BURST="1")
    now = 1e12
    booked = await rl.grant(60, now_ms=now)  # half a second of the rate, booked by "another"
    tat = now + (float(booked[1]) + int(booked[0]) * float(booked[2]))
    count, first, interval, _ = (float(x) for x in await rl.grant(1, urgent=True, now_ms=now))
    assert count == 1 and first + interval <= 0  # allowed at once
    assert float(await redis.hget(KEYS.rate, "tat")) == pytest.approx(tat + interval)
    refused = await rl.grant(1, urgent=True, now_ms=now + 1)
    assert int(refused[0]) == 0
    assert int(refused[1]) == pytest.approx(1000 / (BORROW_SHARE * 100 * HEADROOM), abs=2)
    # a schedule with room books as usual, urgent or not
    later = now + 60_000
    count, first, _, _ = (float(x) for x in await rl.grant(1, urgent=True, now_ms=later))
    assert count == 1 and first <= 0


async def test_the_borrowing_budget_follows_the_rate_in_force(
    redis: Any, make_settings: Any
) -> None:
    """Under SES's MaxSendRate (or an AIMD slow-down) borrows are a share of that rate, not of
    EMAIL_RATE; while burst credit is left nothing is borrowed."""
    from sesflow.sender.rate_limit import BORROW_SHARE

    rl = limiter(redis, make_settings, EMAIL_RATE="500", EMAIL_BURST="5")
    now = 1e12
    count, first, _, _ = (float(x) for x in await rl.grant(1, urgent=True, now_ms=now))
    assert count == 1 and first < 0 and not await redis.hexists(KEYS.rate, "btat")  # burst
    await rl.set_ceiling(14, 60, now_ms=now)
    await rl.grant(100, now_ms=now)  # the schedule is full
    assert int((await rl.grant(1, urgent=True, now_ms=now))[0]) == 1
    refused = await rl.grant(1, urgent=True, now_ms=now + 1)
    assert int(refused[0]) == 0
    assert int(refused[1]) == pytest.approx(1000 / (BORROW_SHARE * 14 * HEADROOM**2), rel=0.01)


async def test_a_borrowed_slot_is_held_to_the_lateness_of_a_reservation(
    redis: Any, make_settings: Any
) -> None:
    """A borrowed slot is on top of the schedule: sent at once or dropped, never a second
    later with the slots of another window."""
    import asyncio

    other = limiter(redis, make_settings, EMAIL_RATE="100", EMAIL_BURST="1")
    await other.grant(60)  # another replica booked the next half second
    rl = limiter(redis, make_settings, EMAIL_RATE="100", EMAIL_BURST="1")
    urgent = await asyncio.wait_for(rl.acquire(urgent=True), 5)
    assert urgent is not None and urgent.tolerance == LATE_S
    assert await redis.hexists(KEYS.rate, "btat")  # it was borrowed

"""The sender's Lua scripts and pipelines through a RedisCluster client, one partition per
master: what runs as one script or MULTI must find its keys on one slot, and the pipelines that
mix slots must be split by the client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from sesflow.common.day_buckets import day_of
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.schema import Event, Job, decode_event
from sesflow.common.scripts import register
from sesflow.common.ses_links import link_lookups
from sesflow.common.settings import Settings
from sesflow.sender.rate_limit import RateLimiter
from sesflow.sender.state import DeliveryState, DeliveryStore, RecordItem

S = DeliveryState.parse  # a state by its stored text

KEYS = Keys("sesflow", 3)


async def queued(client: Any, job: Job) -> str:
    part = KEYS.for_message(job.msg_id)
    await client.xgroup_create(part.sends, SENDERS_GROUP, id="0", mkstream=True)
    entry_id = str(await client.xadd(part.sends, job.fields()))
    await client.xreadgroup(SENDERS_GROUP, "c1", {part.sends: ">"})
    return entry_id


async def test_claim_and_record_with_the_ses_link_on_every_partition(
    cluster_client: RedisCluster,
) -> None:
    """record() with `ses_link` used to queue EVALSHA in a pipeline, which redis-py refuses on a
    cluster: no sent email could be recorded."""
    store = DeliveryStore(cluster_client, KEYS, 60)
    msg_ids = {
        KEYS.for_message(f"17000000000{n:02d}-0").index: f"17000000000{n:02d}-0" for n in range(30)
    }
    assert sorted(msg_ids) == [0, 1, 2]
    for index, msg_id in msg_ids.items():
        part = KEYS.partition(index)
        job = Job(msg_id=msg_id, index=2, email=f"p{index}@example.org")
        entry = await queued(cluster_client, job)
        check = await store.precheck(part, job, "t1")  # state, stop and suppression: 2 slots
        assert (check.state, check.stop_ms, check.suppressed) == (S(""), None, False)
        claim = await store.claim(part, job, "t1", S("i:1:c1"), 1700000000000, S(""))
        assert claim.ok
        ses_id = f"ses-{index}"
        event = Event(type="sent", msg_id=msg_id, index=2, ses_id=ses_id)
        item = RecordItem(
            part, entry, job, S("i:1:c1"), S(f"s:{ses_id}"), event, ses_link=(ses_id, f"{msg_id}_2")
        )
        done = await store.record(item)
        assert done.ok, done
        assert await cluster_client.getrange(part.finals(msg_id), 2, 2) == "s"
        assert await cluster_client.exists(part.state(msg_id)) == 0
        field, [today] = link_lookups(KEYS, ses_id, [day_of(time.time())])
        assert await cluster_client.hget(today, field) == f"{msg_id}_2"
        assert (await cluster_client.xpending(part.sends, SENDERS_GROUP))["pending"] == 0
        entries: Any = await cluster_client.xrange(part.events)
        assert [decode_event(f["e"]).ses_id for _, f in entries] == [ses_id]


async def test_scripts_reload_after_a_script_flush_on_every_master(
    cluster_client: RedisCluster,
) -> None:
    release = register(cluster_client, "release")
    part = KEYS.partition(2)
    await cluster_client.hset(part.state("m"), "1", "i:1:c1")
    await cluster_client.script_flush()  # every primary forgets it: NOSCRIPT, load, run
    assert await release(keys=[part.state("m")], args=[1, "i:1:c1"]) == 1


async def test_one_rate_limiter_for_the_whole_cluster(
    cluster_client: RedisCluster, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(EMAIL_RATE="10", EMAIL_BURST="1", SEND_PARTITIONS="3")
    first, second = (RateLimiter(cluster_client, settings, KEYS) for _ in range(2))
    assert await first.try_acquire(now_ms=1e12) == (True, 0.0)
    # Another replica shares the schedule: its token comes a tenth of a second later.
    _, wait_s = await second.try_acquire(now_ms=1e12)
    assert wait_s >= 0.09
    assert await cluster_client.exists(KEYS.rate) == 1

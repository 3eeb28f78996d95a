"""Hash tags on Redis Cluster: partitions spread over the slot space; every key a script or a
transaction touches together shares one slot."""

from __future__ import annotations

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from sesflow.common.keys import Keys, partition_tag


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_one_partition_keeps_its_plain_tag() -> None:
    assert Keys("sesflow", 1).partition(0).tag == "{sesflow:0}"
    assert partition_tag("other", 0, 1) == "{other:0}"


@pytest.mark.parametrize("partitions", [2, 3, 4, 5, 8, 16])
def test_each_partition_lies_in_its_own_slice_of_the_slots(partitions: int) -> None:
    keys = Keys("sesflow", partitions)
    for n, p in enumerate(keys.partitions):
        low = n * REDIS_CLUSTER_HASH_SLOTS // partitions
        high = (n + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
        assert low <= slot(p.sends) < high, (n, p.tag)
        assert p.tag.startswith(f"{{sesflow:{n}") and p.tag.endswith("}")
    assert len({p.tag for p in keys.partitions}) == partitions
    # Stable: every process computes the same names.
    assert [p.tag for p in Keys("sesflow", partitions).partitions] == [
        p.tag for p in keys.partitions
    ]


def test_three_partitions_land_on_three_masters_of_an_even_cluster() -> None:
    """The default prefix's plain tags put partitions 0 and 1 on the first master of a
    `redis-cli --cluster create` of 3 masters (0-5460, 5461-10922, 10923-16383)."""
    assert slot("{sesflow:0}") < 5461 and slot("{sesflow:1}") < 5461
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    owners = {
        next(i for i, (lo, hi) in enumerate(ranges) if lo <= slot(p.sends) <= hi)
        for p in Keys("sesflow", 3).partitions
    }
    assert owners == {0, 1, 2}


def test_keys_used_together_share_a_slot() -> None:
    keys = Keys("sesflow", 3)
    # ingest's POST transaction and the dispatcher's dead letter + XACK
    assert slot(keys.requests) == slot(keys.idempotency("k")) == slot(keys.requests_dead)
    for p in keys.partitions:
        together = [
            p.sends, p.sends_dead, p.schedule, p.schedule_data, p.schedule_topic("t"),
            p.message("1-0"), p.state("1-0"), p.finals("1-0"), p.opens("1-0"), p.touches("1-0"),
            p.sns_seen("x"), p.sns_bucket(20000, 7), p.stop("t"),
            p.events, p.events_dead, p.stats_topic("t"), p.stats_global, p.stats_hourly,
            p.stats_minutely, p.stats_series("t"), p.stats_topics, p.stats_seconds(29_000_000),
            p.stats_seconds(29_000_000, "t"),
        ]  # fmt: skip
        assert {slot(k) for k in together} == {slot(p.sends)}

"""The reputation guard's rules, without Redis: minimums, exact thresholds, the account's rates,
GUARD=off, and what the guard adds to a batch's transaction."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.stats.counters import PartitionBatch
from sesflow.stats.guard import (
    ACCOUNT_WINDOW_HOURS,
    Figures,
    Limits,
    hourly_fields,
    judge,
    sum_hourly,
    window_hours,
)
from sesflow.stats.reputation import ReputationGuard, describe

SETTINGS = settings_from_mapping({})
TOPIC = Limits.for_topics(SETTINGS)
ACCOUNT = Limits.for_account(SETTINGS)


def test_defaults_are_the_documented_ones() -> None:
    assert SETTINGS.guard == "on"
    assert (TOPIC.bounce.min_sent, float(TOPIC.bounce.rate)) == (100, 0.05)
    assert (TOPIC.complaint.min_sent, float(TOPIC.complaint.rate)) == (1000, 0.001)
    assert (float(ACCOUNT.bounce.rate), float(ACCOUNT.complaint.rate)) == (0.08, 0.004)


def test_hard_bounces_reaching_the_rate_trip_exactly_at_the_threshold() -> None:
    assert judge(Figures(sent=100, bounced_hard=4), TOPIC) is None
    trip = judge(Figures(sent=100, bounced_hard=5), TOPIC)
    assert trip is not None and trip.reason == "bounce_rate"
    assert trip.figures == {
        "sent": 100,
        "bounced_hard": 5,
        "complained": 0,
        "rate": 0.05,
        "threshold": 0.05,
        "min_sent": 100,
    }
    assert judge(Figures(sent=2000, bounced_hard=99), TOPIC) is None
    assert judge(Figures(sent=2000, bounced_hard=100), TOPIC) is not None


def test_nothing_trips_below_the_minimum_of_sent_mail() -> None:
    assert judge(Figures(sent=99, bounced_hard=99), TOPIC) is None
    assert judge(Figures(sent=999, complained=999), TOPIC) is None
    assert judge(Figures(sent=1000, complained=1), TOPIC) is not None


def test_complaints_trip_at_their_own_rate_after_their_own_minimum() -> None:
    assert judge(Figures(sent=1999, complained=1), TOPIC) is None  # 0.05% < 0.1%
    trip = judge(Figures(sent=2000, complained=2), TOPIC)
    assert trip is not None and trip.reason == "complaint_rate"
    assert trip.figures["rate"] == 0.001 and trip.figures["min_sent"] == 1000


def test_bounces_name_a_trip_both_rules_call_for() -> None:
    trip = judge(Figures(sent=1000, bounced_hard=50, complained=10), TOPIC)
    assert trip is not None and trip.reason == "bounce_rate"


def test_rates_compare_as_written_not_as_floats() -> None:
    # 0.07 * 100 is 7.000000000000001 in floats: 7 of 100 must still reach 7%.
    limits = Limits.for_topics(settings_from_mapping({"GUARD_BOUNCE_RATE": "0.07"}))
    assert judge(Figures(sent=100, bounced_hard=7), limits) is not None
    assert judge(Figures(sent=100, bounced_hard=6), limits) is None


def test_a_zero_minimum_never_pauses_a_clean_topic() -> None:
    limits = Limits.for_topics(settings_from_mapping({"GUARD_MIN_SENT": "0"}))
    assert judge(Figures(), limits) is None
    assert judge(Figures(sent=10), limits) is None
    assert judge(Figures(sent=10, bounced_hard=1), limits) is not None


def test_the_account_trips_only_at_its_higher_rates() -> None:
    figures = Figures(sent=1000, bounced_hard=79, complained=3)
    assert judge(figures, TOPIC) is not None
    assert judge(figures, ACCOUNT) is None
    trip = judge(Figures(sent=1000, bounced_hard=80), ACCOUNT)
    assert trip is not None and trip.reason == "bounce_rate" and trip.figures["threshold"] == 0.08
    trip = judge(Figures(sent=1000, complained=4), ACCOUNT)
    assert trip is not None and trip.reason == "complaint_rate"


def test_the_window_is_this_hour_and_the_ones_before() -> None:
    now = 1_767_225_600.0 + 1800  # 2026-01-01 00:30 UTC
    hours = window_hours(now)
    assert len(hours) == ACCOUNT_WINDOW_HOURS
    assert hours[0] == "2026010100" and hours[1] == "2025123123" and hours[-1] == "2025123101"
    fields = hourly_fields(hours[:2])
    assert fields == [
        "sent:2026010100",
        "sent:2025123123",
        "bounced_hard:2026010100",
        "bounced_hard:2025123123",
        "complained:2026010100",
        "complained:2025123123",
    ]
    assert sum_hourly([1, 2, 3, 4, 5, 6], 2) == Figures(sent=3, bounced_hard=7, complained=11)


def test_describe_says_what_tripped() -> None:
    trip = judge(Figures(sent=150, bounced_hard=12), TOPIC)
    assert trip is not None
    assert describe(trip) == "bounce_rate: 12 hard bounces of 150 sent (8.00%, limit 5.00%)"


class Tx:
    """Records what the guard queues in a transaction."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def hmget(self, key: str, fields: list[str]) -> None:
        self.calls.append((key, fields))


def batch_of(topics: dict[str, Counter[str]]) -> PartitionBatch:
    batch = PartitionBatch()
    for topic, counts in topics.items():
        batch.topics[topic] = counts
        batch.global_.update(counts)
    return batch


def guard(settings: Settings = SETTINGS) -> ReputationGuard:
    return ReputationGuard(settings, client=FakeAsyncRedis(), keys=Keys())


def test_the_guard_reads_only_topics_the_batch_moved() -> None:
    p = Keys().partition(0)
    tx = Tx()
    batch = batch_of(
        {
            "a": Counter(sent=3),
            "b": Counter(bounced_hard=1, bounced=1),
            "c": Counter(opened=2, delivered=1),
        }
    )
    reads = guard().read_in(tx, p, batch, now=1_767_225_600.0)
    assert reads.topics == ("a", "b") and len(reads.hours) == ACCOUNT_WINDOW_HOURS
    assert reads.count == len(tx.calls) == 4
    assert tx.calls[0] == (p.paused, ["", "a", "b"])
    assert tx.calls[1] == (p.stats_topic("a"), ["sent", "bounced_hard", "complained"])
    assert tx.calls[3][0] == p.stats_hourly and len(tx.calls[3][1]) == 3 * ACCOUNT_WINDOW_HOURS


def test_a_batch_without_sent_bounces_or_complaints_costs_nothing() -> None:
    tx = Tx()
    batch = batch_of({"c": Counter(opened=2, delivered=1, bounced_soft=1)})
    assert guard().read_in(tx, Keys().partition(0), batch).count == 0
    assert tx.calls == []


@pytest.mark.parametrize("value", ["off", "OFF"])
def test_guard_off_reads_nothing(value: str) -> None:
    off = guard(settings_from_mapping({"GUARD": value}))
    tx = Tx()
    batch = batch_of({"b": Counter(sent=1000, bounced_hard=1000)})
    assert off.read_in(tx, Keys().partition(0), batch).count == 0
    assert tx.calls == []

from __future__ import annotations

from sesflow.common.keys import Keys
from sesflow.common.schema import Event, EventType, encode
from sesflow.stats.counters import (
    METRICS,
    RECENT_S,
    MalformedEvent,
    PartitionBatch,
    hour_of,
    increments,
    parse_entry,
)

TS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


def fields(**kw: object) -> dict[str, str]:
    return {"e": encode(Event(**kw)).decode()}  # type: ignore[arg-type]


def test_every_event_type_counts_n_under_its_own_name() -> None:
    for event_type in EventType:
        assert increments(Event(type=event_type.value, n=3))[event_type.value] == 3
        assert event_type.value in METRICS


def test_derived_splits() -> None:
    assert increments(Event(type="bounced", bounce_type="Permanent")) == {
        "bounced": 1,
        "bounced_hard": 1,
    }
    for soft in ("Transient", "Undetermined"):
        assert increments(Event(type="bounced", bounce_type=soft))["bounced_soft"] == 1
    assert increments(Event(type="opened", unique=True)) == {"opened": 1, "opened_unique": 1}
    assert increments(Event(type="opened")) == {"opened": 1}
    assert increments(Event(type="clicked", unique=True))["clicked_unique"] == 1


def test_malformed_entries_are_refused_with_a_reason() -> None:
    for bad, reason in (
        (None, "no 'e' field"),
        ({"x": "1"}, "no 'e' field"),
        ({"e": "{not json"}, "undecodable"),
        ({"e": '{"n": 1}'}, "undecodable"),
        ({"e": '{"type": "sent", "n": "many"}'}, "undecodable"),
        ({"e": '{"type": "bogus"}'}, "unknown event type"),
        ({"e": '{"type": "bounced_hard"}'}, "unknown event type"),
        ({"e": '{"type": "sent", "n": -2}'}, "negative"),
    ):
        try:
            parse_entry(bad)
        except MalformedEvent as exc:
            assert reason in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_batch_sums_per_key_and_bucket() -> None:
    batch = PartitionBatch()
    batch.add("1-0", fields(type="accepted", topic="t", n=5, ts=TS))
    batch.add("1-1", fields(type="sent", topic="t", index=0, ts=TS))
    batch.add("1-2", fields(type="sent", topic="t", index=1, ts=TS + 60_000))
    batch.add("1-3", fields(type="bounced", topic="u", bounce_type="Permanent", ts=TS))
    batch.add("1-4", {"e": "garbage"})
    batch.add(f"{TS}-5", fields(type="sent"))  # no ts: the entry id's time; no topic: global only
    assert len(batch) == 6 and [d[0] for d in batch.dead] == ["1-4"]
    assert batch.global_ == {"accepted": 5, "sent": 3, "bounced": 1, "bounced_hard": 1}
    assert batch.topics == {"t": {"accepted": 5, "sent": 2}, "u": {"bounced": 1, "bounced_hard": 1}}
    hour, minute = hour_of(TS / 1000), TS // 60_000
    assert hour == "2023111422"
    assert batch.hourly[f"sent:{hour}"] == 3
    assert batch.minutely[f"sent:{minute}"] == 2 and batch.minutely[f"sent:{minute + 1}"] == 1
    assert batch.series["t"] == {
        f"accepted:{minute}": 5,
        f"sent:{minute}": 1,
        f"sent:{minute + 1}": 1,
    }
    assert batch.last_seen == {"t": TS + 60_000, "u": TS}


def test_sent_is_counted_per_second_of_its_event_time_for_all_and_per_topic() -> None:
    batch = PartitionBatch()
    minute = TS // 60_000
    second = minute * 60 + 58  # two seconds before the next minute
    batch.add("1-0", fields(type="sent", topic="news", ts=second * 1000 + 400))
    batch.add("2-0", fields(type="sent", topic="news", ts=second * 1000 + 999))
    batch.add("3-0", fields(type="sent", topic="digest", ts=(second + 2) * 1000, n=3))
    batch.add("4-0", fields(type="sent", ts=second * 1000))  # no topic: in the total only
    batch.add("5-0", fields(type="delivered", topic="news", ts=second * 1000))  # not a send
    p = Keys().partition(0)
    writes = {key: (fields_, at) for key, fields_, at in batch.second_writes(p, TS / 1000)}
    expire_first = (minute + 1) * 60 + RECENT_S + 60
    assert writes == {
        p.stats_seconds(minute): ({str(second): 3}, expire_first),
        p.stats_seconds(minute + 1): ({str(second + 2): 3}, expire_first + 60),
        p.stats_seconds(minute, "news"): ({str(second): 2}, expire_first),
        p.stats_seconds(minute + 1, "digest"): ({str(second + 2): 3}, expire_first + 60),
    }


def test_seconds_older_than_the_recent_span_are_not_written() -> None:
    batch = PartitionBatch()
    now_s = TS // 1000
    batch.add("1-0", fields(type="sent", topic="t", ts=(now_s - RECENT_S - 1) * 1000))
    batch.add("2-0", fields(type="sent", topic="t", ts=(now_s - RECENT_S) * 1000))
    p = Keys().partition(0)
    written = {key: f for key, f, _ in batch.second_writes(p, now_s + 0.5)}
    assert written[p.stats_seconds((now_s - RECENT_S) // 60)] == {str(now_s - RECENT_S): 1}
    assert all(str(now_s - RECENT_S - 1) not in f for f in written.values())


def test_a_topic_name_cannot_collide_with_another_minute() -> None:
    p = Keys().partition(0)
    assert p.stats_seconds(5, "1") != p.stats_seconds(51)
    assert p.stats_seconds(5, "1:x") != p.stats_seconds(51, "x")


def test_feedback_that_says_nothing_about_reputation_counts_apart() -> None:
    """SES's own list refusing a mail, and a not-spam report, are not bounces or complaints."""
    refused = Event(
        type="bounced", bounce_type="Permanent", bounce_subtype="OnAccountSuppressionList"
    )
    assert increments(refused) == {"bounced_suppressed": 1}
    assert increments(Event(type="complained", detail="not-spam", n=2)) == {
        "complained_not_spam": 2
    }
    listed = Event(type="complained", detail="OnAccountSuppressionList")
    assert increments(listed) == {"complained_suppressed": 1}
    assert increments(Event(type="complained", detail="abuse")) == {"complained": 1}
    for name in ("bounced_suppressed", "complained_not_spam", "complained_suppressed"):
        assert name in METRICS  # a time-series metric too
        assert "unknown event type" in _refusal(fields(type=name))


def test_delays_count_by_their_type_when_it_is_known() -> None:
    assert increments(Event(type="delivery_delayed", detail="MailboxFull smtp; 452")) == {
        "delivery_delayed": 1,
        "delivery_delayed_mailbox_full": 1,
    }
    assert (
        increments(Event(type="delivery_delayed", detail="IPFailure"))[
            "delivery_delayed_ip_failure"
        ]
        == 1
    )
    byoip = Event(type="delivery_delayed", detail="BYOIPHostNameLookupUnavailable")
    assert "delivery_delayed_byoip_host_name_lookup_unavailable" in increments(byoip)
    # An unknown type never makes a field of its own: field names do not come from the input.
    for detail in ("SomethingNew x", "", "smtp; 421"):
        assert increments(Event(type="delivery_delayed", detail=detail)) == {"delivery_delayed": 1}
    assert "delivery_delayed_sending_deferral" in METRICS


def _refusal(entry: dict[str, str]) -> str:
    try:
        parse_entry(entry)
    except MalformedEvent as exc:
        return str(exc)
    raise AssertionError(f"{entry!r} was accepted")

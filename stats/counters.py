"""What an event adds to the counters, and the names of the time buckets.

Pure functions with no Redis in them, so the counting rules are easy to read and to test.

Every event adds `n` to the field named after its type, plus derived fields:
`bounced_hard` (Permanent bounces), `bounced_soft` (Transient and Undetermined),
`opened_unique` and `clicked_unique` (the first open / click of a recipient),
`delivery_delayed_<type>` (a delay of a known SES delay type). `requeued` (a failed recipient
replayed from the dead letters) also takes `n` off `failed`, in the totals only: the time buckets
keep the failure where it happened.

Three kinds of SES feedback count only in a field of their own, never in the field of their type
(`common.ses_feedback`): a bounce of subtype OnAccountSuppressionList (`bounced_suppressed`), a
`not-spam` complaint (`complained_not_spam`) and a complaint of subtype OnAccountSuppressionList
(`complained_suppressed`). So `bounced` = `bounced_hard` + `bounced_soft` and `complained` stay
what the bounce and complaint rates (and the reputation guard) are made of.

`sent` is also counted per second of its event time (when SES accepted it, not when stats read
it: a batch applied late fills the seconds it belongs to instead of making a spike), for every
topic and per topic, in one hash per minute that expires RECENT_S after that minute: the live
send rate and each topic's share of it come from these.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from sesflow.common import ses_feedback
from sesflow.common.keys import PartitionKeys
from sesflow.common.schema import EVENT_FIELD, Event, EventType, decode_event

DERIVED_FIELDS = (
    "bounced_hard",
    "bounced_soft",
    "opened_unique",
    "clicked_unique",
    *ses_feedback.FIELDS,
)
# Every counter field a hash or a time bucket may hold (also the valid time-series metrics).
METRICS = frozenset({t.value for t in EventType} | set(DERIVED_FIELDS))

HOUR_FORMAT = "%Y%m%d%H"
HOURLY_RETENTION_S = 35 * 24 * 3600
MINUTELY_RETENTION_S = 48 * 3600
# Per-topic minute series expire a little after their retention once the topic goes quiet.
SERIES_TTL_S = MINUTELY_RETENTION_S + 3600
# Per-second `sent` counts are kept this long (the send-rate chart's span).
RECENT_S = 15 * 60


class MalformedEvent(ValueError):
    """A stream entry stats cannot count; it is dead-lettered with this reason."""


LATEST_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last hour bucket


def parse_entry(fields: dict[str, str] | None) -> Event:
    """The Event of one `events` entry, or MalformedEvent saying why it cannot be counted."""
    if not fields or EVENT_FIELD not in fields:
        raise MalformedEvent(f"no '{EVENT_FIELD}' field")
    try:
        event = decode_event(fields[EVENT_FIELD])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(f"undecodable event: {exc}") from exc
    except UnicodeEncodeError as exc:  # bytes that are not UTF-8, read with surrogateescape
        raise MalformedEvent(f"event is not UTF-8: {exc}") from exc
    if event.type not in METRICS or event.type in DERIVED_FIELDS:
        raise MalformedEvent(f"unknown event type {event.type!r}")
    if event.n < 0:
        raise MalformedEvent(f"negative count n={event.n}")
    if not 0 <= event.ts <= LATEST_TS_MS:
        raise MalformedEvent(f"timestamp out of range ts={event.ts}")
    return event


def increments(event: Event) -> Counter[str]:
    """Counter fields this event adds to (type and derived splits) -> amount."""
    if event.type == EventType.BOUNCED:
        return Counter(dict.fromkeys(ses_feedback.bounce_counters(event), event.n))
    if event.type == EventType.COMPLAINED:
        return Counter({ses_feedback.complaint_kind(event.detail): event.n})
    out: Counter[str] = Counter({event.type: event.n})
    if event.type == EventType.DELIVERY_DELAYED:
        if delay := ses_feedback.delay_type(event.detail):
            out[ses_feedback.DELAY_FIELDS[delay]] += event.n
    elif event.type == EventType.OPENED and event.unique:
        out["opened_unique"] += event.n
    elif event.type == EventType.CLICKED and event.unique:
        out["clicked_unique"] += event.n
    elif event.type == EventType.REQUEUED:
        out["failed"] -= event.n
    return out


def hour_of(ts_s: float) -> str:
    return datetime.fromtimestamp(ts_s, UTC).strftime(HOUR_FORMAT)


def hour_start(hour: str) -> float:
    return datetime.strptime(hour, HOUR_FORMAT).replace(tzinfo=UTC).timestamp()


def bucket_field(metric: str, bucket: str | int) -> str:
    return f"{metric}:{bucket}"


def split_bucket_field(name: str) -> tuple[str, str]:
    metric, _, bucket = name.rpartition(":")
    return metric, bucket


def seconds_expire_at(minute: int) -> int:
    """When the per-second hash of epoch `minute` may go: RECENT_S after its last second, plus
    a minute so that a read of the whole span never finds a hash half gone."""
    return (minute + 1) * 60 + RECENT_S + 60


def entry_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else int(time.time() * 1000)


@dataclass
class PartitionBatch:
    """Events of one partition read but not yet applied, pre-summed per key and field."""

    ids: list[str] = field(default_factory=list)
    global_: Counter[str] = field(default_factory=Counter)
    topics: dict[str, Counter[str]] = field(default_factory=dict)
    hourly: Counter[str] = field(default_factory=Counter)
    minutely: Counter[str] = field(default_factory=Counter)
    series: dict[str, Counter[str]] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)  # topic -> latest event ms
    # topic ("" = every topic) -> epoch second -> recipients sent
    seconds: dict[str, Counter[int]] = field(default_factory=dict)
    dead: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)  # events counted, by type
    first_read: float = 0.0  # monotonic time the oldest entry was read

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, entry_id: str, fields: dict[str, str] | None) -> None:
        """Count one entry; a malformed one is kept aside for the dead-letter stream."""
        if not self.ids:
            self.first_read = time.monotonic()
        self.ids.append(entry_id)
        try:
            event = parse_entry(fields)
        except MalformedEvent as exc:
            self.dead.append((entry_id, fields or {}, str(exc)))
            return
        ts_ms = event.ts if event.ts > 0 else entry_ms(entry_id)
        hour, minute = hour_of(ts_ms / 1000), ts_ms // 60_000
        adds = increments(event)
        self.events[event.type] += 1
        self.global_.update(adds)
        bucketed = {name: n for name, n in adds.items() if n > 0}  # see the module doc
        for name, n in bucketed.items():
            self.hourly[bucket_field(name, hour)] += n
            self.minutely[bucket_field(name, minute)] += n
        if event.type == EventType.SENT and event.n > 0:
            second = ts_ms // 1000
            for scope in ("", event.topic) if event.topic else ("",):
                self.seconds.setdefault(scope, Counter())[second] += event.n
        if event.topic:
            self.topics.setdefault(event.topic, Counter()).update(adds)
            series = self.series.setdefault(event.topic, Counter())
            for name, n in bucketed.items():
                series[bucket_field(name, minute)] += n
            self.last_seen[event.topic] = max(self.last_seen.get(event.topic, 0), ts_ms)

    def second_writes(self, p: PartitionKeys, now: float) -> list[tuple[str, dict[str, int], int]]:
        """(key, "<second>" -> sent, expire-at epoch seconds) for the per-second hashes this
        batch adds to. Seconds already past RECENT_S are left out: their hash is gone or going."""
        oldest = int(now) - RECENT_S
        writes: dict[str, tuple[dict[str, int], int]] = {}
        for topic, counts in self.seconds.items():
            for second, n in counts.items():
                if second < oldest:
                    continue
                minute = second // 60
                key = p.stats_seconds(minute, topic)
                fields, _ = writes.setdefault(key, ({}, seconds_expire_at(minute)))
                fields[str(second)] = n
        return [(key, fields, expire_at) for key, (fields, expire_at) in writes.items()]

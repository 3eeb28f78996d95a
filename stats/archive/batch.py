"""A batch of `events` entries turned into the archive's rows, before anything is written.

Per entry: one event row, keyed by (partition, entry id). Per recipient the batch touches: one
merged recipient row (`RecipientRow.apply` folds in the precedence of `vocabulary`, the same one
the upsert in `store` applies against the row already stored, so merging in the batch first
and in SQL after gives the same state as applying the events one by one, in any order). Per
message: its id, topic and first time; per topic: its first and last event time.

Entries stats dead-letters (`stats.counters.parse_entry`) are skipped: stats writes their dead
letter (one per entry, not one per consumer group). Entries stats counts but the archive cannot
store (a number out of the database's range) are the archive's own dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sesflow.common.keys import accepted_ms
from sesflow.common.schema import EVENT_FIELD, Event, EventType
from sesflow.stats.archive.vocabulary import NO_STATE_RANK, Word, word_of
from sesflow.stats.counters import MalformedEvent, entry_ms, parse_entry

MAX_INDEX = 2**31 - 1  # recipients.idx / events.idx are 32-bit on Postgres
MAX_COUNT = 2**31 - 1


def clean(text: str) -> str:
    """Text every database takes: valid UTF-8 (bytes read with surrogateescape are replaced)
    and no NUL (Postgres refuses it in text)."""
    if text.isascii():
        return text.replace("\x00", "") if "\x00" in text else text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


EventRow = tuple[int, str, int, str, str, str, int, int, str, str, str, str, str, str]


@dataclass(slots=True)
class RecipientRow:
    """One recipient as the batch leaves it: its events folded in with `apply`."""

    msg_id: str
    idx: int
    email: str = ""
    state: str = ""  # "" until an event sets one
    state_rank: int = NO_STATE_RANK
    state_at_ms: int = 0  # when the state was reached (the tie-breaker between equal ranks)
    ses_id: str = ""
    last_event: str = ""
    last_event_rank: int = NO_STATE_RANK
    last_event_at_ms: int = -1
    sent_at_ms: int | None = None
    updated_at_ms: int = 0

    def apply(self, word: Word, ts: int, email: str, ses_id: str) -> None:
        """Fold one event in, with the precedence of `vocabulary` (what
        `store.UPSERT_RECIPIENTS` does against the stored row): the order events are applied
        in, and applying one twice, change nothing."""
        if not self.email:
            self.email = email
        if word.state and (word.rank, ts) > (self.state_rank, self.state_at_ms):
            self.state, self.state_rank, self.state_at_ms = word.state, word.rank, ts
        if (ts, word.rank) > (self.last_event_at_ms, self.last_event_rank):
            self.last_event, self.last_event_rank, self.last_event_at_ms = word.name, word.rank, ts
        if word.send_result and (self.sent_at_ms is None or ts > self.sent_at_ms):
            self.sent_at_ms = ts
            self.ses_id = ses_id or self.ses_id
        elif not self.ses_id:
            self.ses_id = ses_id
        if ts > self.updated_at_ms:
            self.updated_at_ms = ts


@dataclass(slots=True)
class MessageSeen:
    topic: str
    first_at_ms: int


@dataclass(slots=True)
class Accepted:
    """A message's `accepted` event: the metadata to read from its content hash."""

    msg_id: str
    topic: str
    total: int


@dataclass
class ArchiveBatch:
    partition: int
    ids: list[str] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    recipients: dict[tuple[str, int], RecipientRow] = field(default_factory=dict)
    messages: dict[str, MessageSeen] = field(default_factory=dict)
    accepted: list[Accepted] = field(default_factory=list)
    topics: dict[str, tuple[int, int]] = field(default_factory=dict)  # topic -> (first, last)
    # Indexes of event rows that name a recipient but no address: filled in before writing.
    need_email: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): stats' dead
    dead: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    first_read: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, entry_id: str, fields: dict[str, str] | None) -> None:
        self.ids.append(entry_id)
        if fields is None:  # deleted while pending: nothing to archive
            return
        try:
            event = parse_entry(fields)
        except MalformedEvent as exc:
            self.skipped.append((entry_id, str(exc)))
            return
        problem = out_of_range(event)
        if problem:
            self.dead.append((entry_id, fields, f"archive: {problem}"))
            return
        self._add(entry_id, event, fields[EVENT_FIELD])

    def _add(self, entry_id: str, event: Event, raw: str) -> None:
        ts = event.ts if event.ts > 0 else entry_ms(entry_id)
        word = word_of(event.type)
        row = event_row(self.partition, entry_id, ts, word.name, event, raw)
        topic, msg_id, email = row[4], row[5], row[8]
        if msg_id and event.index >= 0 and not email:
            self.need_email.append(len(self.events))
        self.events.append(row)
        if topic:
            span = self.topics.get(topic)
            if span is None:
                self.topics[topic] = (ts, ts)
            elif ts < span[0] or ts > span[1]:
                self.topics[topic] = (min(span[0], ts), max(span[1], ts))
        if msg_id:
            self._message(msg_id, topic, ts, event)
            if event.index >= 0:
                key = (msg_id, event.index)
                recipient = self.recipients.get(key)
                if recipient is None:
                    recipient = self.recipients[key] = RecipientRow(msg_id, event.index)
                recipient.apply(word, ts, email, row[9])

    def _message(self, msg_id: str, topic: str, ts: int, event: Event) -> None:
        seen = self.messages.get(msg_id)
        if seen is None:
            self.messages[msg_id] = MessageSeen(topic, ts)
        elif topic and not seen.topic:
            seen.topic = topic
        if event.type == EventType.ACCEPTED:
            self.accepted.append(Accepted(msg_id, topic, event.n))

    def fill_emails(self, emails: dict[tuple[str, int], str]) -> None:
        """Give the event rows that lack an address the one their recipient has."""
        for i in self.need_email:
            row = self.events[i]
            email = emails.get((row[5], row[6]), "")
            if email:
                self.events[i] = (*row[:8], email, *row[9:])
                recipient = self.recipients.get((row[5], row[6]))
                if recipient is not None and not recipient.email:
                    recipient.email = email

    def missing_emails(self) -> set[tuple[str, int]]:
        """Recipients named without an address in this batch and with none in it either."""
        missing = set()
        for i in self.need_email:
            key = (self.events[i][5], self.events[i][6])
            recipient = self.recipients.get(key)
            if recipient is None or not recipient.email:
                missing.add(key)
        return missing

    def accepted_at(self, msg_id: str) -> int:
        """A message id is the entry id of its request: its first part is the accepted time."""
        return accepted_ms(msg_id) or self.messages[msg_id].first_at_ms


def detail_of(event: Event) -> str:
    """The detail column: a `failed` event's reason (`rejected:<code>`, `max_attempts`…)
    before what SES said, so the timeline tells why."""
    if event.reason and event.detail and event.reason not in event.detail:
        return f"{event.reason}: {event.detail}"
    return event.detail or event.reason


def event_row(
    partition: int, entry_id: str, ts: int, name: str, event: Event, raw: str
) -> EventRow:
    detail = detail_of(event)
    if raw.isascii() and "\\u" not in raw:  # the usual case: nothing to clean
        return (
            partition, entry_id, ts, name, event.topic, event.msg_id, event.index, event.n,
            event.email, event.ses_id, detail, event.bounce_type, event.bounce_subtype,
            event.url,
        )  # fmt: skip
    return (
        partition, entry_id, ts, name, clean(event.topic), clean(event.msg_id), event.index,
        event.n, clean(event.email), clean(event.ses_id), clean(detail),
        clean(event.bounce_type), clean(event.bounce_subtype), clean(event.url),
    )  # fmt: skip


def out_of_range(event: Event) -> str:
    if not -1 <= event.index <= MAX_INDEX:
        return f"recipient index out of range: {event.index}"
    if event.n > MAX_COUNT:
        return f"count out of range: {event.n}"
    return ""

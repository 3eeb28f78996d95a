"""The archive's read side: what the look-up routes and the dashboard ask, one query each.

Every list is keyset-paginated: a page is `limit` rows strictly after the cursor's key in a total
order backed by an index, so a page costs the same on the first page and the thousandth, whatever
the archive's size. Nothing here reads Redis.

Orders (and the index each one walks):
    a message's recipients    idx ascending                 recipients PK / (msg_id, state, idx)
    an address's events       ts_ms, partition, entry_id descending     events (email, ts_ms DESC)
    topics                    last_at_ms, topic descending  topics (last_at_ms DESC, topic DESC)
    a topic's messages        accepted_at_ms, msg_id descending
                                                  messages (topic, accepted_at_ms DESC, msg_id DESC)

A fetch asks for `limit + 1` rows: the extra one only says whether there is a next page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sesflow.stats.archive.cursor import Key, encode_cursor

Row = dict[str, Any]


class Reader(Protocol):
    """What the look-ups need of the archive's connection layer (`stats.archive.db`): one
    query interface over SQLite and Postgres, `$n` placeholders, rows keyed by column name."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...


class Args:
    """Query parameters, each added where the SQL needs it: `args.add(v)` is its `$n`."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, *values: Any) -> str:
        start = len(self.values)
        self.values.extend(values)
        return ", ".join(f"${start + n + 1}" for n in range(len(values)))


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None

    def view(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def page(
    kind: str,
    rows: list[Row],
    limit: int,
    key: Callable[[Row], Sequence[int | str]],
    item: Callable[[Row], dict[str, Any]],
) -> Page:
    """The first `limit` rows as items; a cursor after the last one when more rows follow."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(kind, key(rows[-1])) if more and rows else None
    return Page([item(row) for row in rows], cursor)


# --- one message -------------------------------------------------------------------------------

MESSAGE_COLUMNS = "msg_id, topic, subject, lane, total, accepted_at_ms, scheduled_at_ms"


def message_item(row: Row) -> dict[str, Any]:
    return {
        "id": row["msg_id"],
        "topic_id": row["topic"],
        "subject": row["subject"],
        "lane": row["lane"],
        "total": row["total"],
        "accepted_at": row["accepted_at_ms"],
        "scheduled_at": row["scheduled_at_ms"],
    }


async def message(db: Reader, msg_id: str) -> dict[str, Any] | None:
    """The message and its recipients counted by state; None when the archive has no such id."""
    rows = await db.fetch(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE msg_id = $1", msg_id)
    if not rows:
        return None
    counts = await db.fetch(
        "SELECT state, count(*) AS n FROM recipients WHERE msg_id = $1 GROUP BY state", msg_id
    )
    return {**message_item(rows[0]), "counts": {r["state"]: int(r["n"]) for r in counts}}


async def message_exists(db: Reader, msg_id: str) -> bool:
    return bool(await db.fetch("SELECT 1 AS one FROM messages WHERE msg_id = $1", msg_id))


# --- a message's recipients --------------------------------------------------------------------

RECIPIENTS = "r"
RECIPIENT_COLUMNS = (
    "idx, email, state, ses_id, last_event, last_event_at_ms, sent_at_ms, updated_at_ms"
)


def recipient_item(row: Row) -> dict[str, Any]:
    return {
        "index": row["idx"],
        "email": row["email"],
        "state": row["state"],
        "ses_id": row["ses_id"] or None,
        "last_event": row["last_event"] or None,
        "last_event_at": row["last_event_at_ms"],
        "sent_at": row["sent_at_ms"],
        "updated_at": row["updated_at_ms"],
    }


async def recipients(
    db: Reader, msg_id: str, state: str | None, after: Key | None, limit: int
) -> Page:
    """The message's recipients by index, only those in `state` when given."""
    args = Args()
    where = [f"msg_id = {args.add(msg_id)}"]
    if state is not None:
        where.append(f"state = {args.add(state)}")
    if after is not None:
        where.append(f"idx > {args.add(after[0])}")
    rows = await db.fetch(
        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE {' AND '.join(where)} "
        f"ORDER BY idx LIMIT {args.add(limit + 1)}",
        *args.values,
    )
    return page(RECIPIENTS, rows, limit, lambda r: (r["idx"],), recipient_item)


# --- an address's timeline ---------------------------------------------------------------------

EVENTS = "e"
EVENT_COLUMNS = (
    "ts_ms, partition, entry_id, type, topic, msg_id, idx, ses_id, detail, bounce_type, "
    "bounce_subtype, url"
)
# Carried only by some kinds of event (a bounce its type, a click its URL): left out when empty.
EVENT_EXTRAS = ("ses_id", "detail", "bounce_type", "bounce_subtype", "url")


def event_item(row: Row) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": row["type"],
        "at": row["ts_ms"],
        "topic_id": row["topic"],
        "message_id": row["msg_id"],
        "index": row["idx"],
    }
    item.update((name, row[name]) for name in EVENT_EXTRAS if row[name])
    return item


async def recipient_events(
    db: Reader, email: str, since_ms: int | None, after: Key | None, limit: int
) -> Page:
    """The address's events across every message, newest first (ties: the stream's order).
    The archive keeps an address as it was sent to: `email` as given and in lower case both
    match, each through the (email, ts_ms) index."""
    args = Args()
    where = [f"email IN ({args.add(*spellings(email))})"]
    if since_ms is not None:
        where.append(f"ts_ms >= {args.add(since_ms)}")
    if after is not None:
        where.append(f"(ts_ms, partition, entry_id) < ({args.add(*after)})")
    rows = await db.fetch(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
        f"ORDER BY ts_ms DESC, partition DESC, entry_id DESC LIMIT {args.add(limit + 1)}",
        *args.values,
    )
    key = lambda r: (r["ts_ms"], r["partition"], r["entry_id"])  # noqa: E731
    return page(EVENTS, rows, limit, key, event_item)


def spellings(email: str) -> tuple[str, str]:
    return email, email.lower()


async def address_known(db: Reader, email: str) -> bool:
    sql = "SELECT 1 AS one FROM events WHERE email IN ($1, $2) LIMIT 1"
    return bool(await db.fetch(sql, *spellings(email)))


# --- topics and their messages -----------------------------------------------------------------

TOPICS = "t"


def topic_item(row: Row) -> dict[str, Any]:
    return {
        "topic_id": row["topic"],
        "first_at": row["first_at_ms"],
        "last_at": row["last_at_ms"],
        "messages": row["messages"],
    }


async def topics(db: Reader, after: Key | None, limit: int) -> Page:
    """Topics, the most recently active first. A topic that gets a message while a client pages
    moves to the front: the later pages do not show it again, only a new first page does."""
    args = Args()
    where = f"WHERE (last_at_ms, topic) < ({args.add(*after)})" if after is not None else ""
    rows = await db.fetch(
        f"SELECT topic, first_at_ms, last_at_ms, messages FROM topics {where} "
        f"ORDER BY last_at_ms DESC, topic DESC LIMIT {args.add(limit + 1)}",
        *args.values,
    )
    return page(TOPICS, rows, limit, lambda r: (r["last_at_ms"], r["topic"]), topic_item)


TOPIC_MESSAGES = "m"


async def topic_messages(db: Reader, topic: str, after: Key | None, limit: int) -> Page:
    """The topic's messages, the most recently accepted first."""
    args = Args()
    where = [f"topic = {args.add(topic)}"]
    if after is not None:
        where.append(f"(accepted_at_ms, msg_id) < ({args.add(*after)})")
    rows = await db.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(where)} "
        f"ORDER BY accepted_at_ms DESC, msg_id DESC LIMIT {args.add(limit + 1)}",
        *args.values,
    )
    key = lambda r: (r["accepted_at_ms"], r["msg_id"])  # noqa: E731
    return page(TOPIC_MESSAGES, rows, limit, key, message_item)


async def topic_exists(db: Reader, topic: str) -> bool:
    return bool(await db.fetch("SELECT 1 AS one FROM topics WHERE topic = $1", topic))

"""Rows straight into the archive's tables, for the look-up tests and the bench: what the
archive writer would have written, without running a pipeline.

Each `add_*` takes tuples in the column order of its constant and inserts them in one
transaction through the archive's own query interface (SQLite and Postgres alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MESSAGE_COLUMNS = (
    "msg_id",
    "topic",
    "subject",
    "lane",
    "total",
    "accepted_at_ms",
    "scheduled_at_ms",
)
RECIPIENT_COLUMNS = (
    "msg_id",
    "idx",
    "email",
    "state",
    "state_rank",
    "ses_id",
    "last_event",
    "last_event_at_ms",
    "sent_at_ms",
    "updated_at_ms",
)
EVENT_COLUMNS = (
    "partition",
    "entry_id",
    "ts_ms",
    "type",
    "topic",
    "msg_id",
    "idx",
    "n",
    "email",
    "ses_id",
    "detail",
    "bounce_type",
    "bounce_subtype",
    "url",
)
TOPIC_COLUMNS = ("topic", "first_at_ms", "last_at_ms", "messages")
TABLES = {
    "messages": MESSAGE_COLUMNS,
    "recipients": RECIPIENT_COLUMNS,
    "events": EVENT_COLUMNS,
    "topics": TOPIC_COLUMNS,
}


def insert_sql(table: str) -> str:
    columns = TABLES[table]
    marks = ", ".join(f"${n + 1}" for n in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


async def add_rows(db: Any, table: str, rows: Iterable[Sequence[Any]]) -> None:
    async with db.transaction() as tx:
        await tx.executemany(insert_sql(table), list(rows))


EVENT_DEFAULTS: dict[str, Any] = {
    "topic": "",
    "msg_id": "",
    "idx": -1,
    "n": 1,
    "email": "",
    "ses_id": "",
    "detail": "",
    "bounce_type": "",
    "bounce_subtype": "",
    "url": "",
}


def event(partition: int, entry_id: str, ts_ms: int, kind: str, **fields: Any) -> tuple[Any, ...]:
    """An `events` row; `fields` by column name (topic, msg_id, idx, email, ses_id, url...)."""
    unknown = set(fields) - set(EVENT_DEFAULTS)
    assert not unknown, f"no such events columns: {unknown}"
    values = {**EVENT_DEFAULTS, **fields}
    return (partition, entry_id, ts_ms, kind, *(values[c] for c in EVENT_COLUMNS[4:]))

"""A recipient's row does not depend on the order its events arrive in, nor on how they were
batched, nor on a batch applied twice: a late older event never overwrites a newer state."""

from __future__ import annotations

import random

from sesflow.common.schema import Event, EventType, encode
from sesflow.stats.archive.batch import ArchiveBatch
from sesflow.stats.archive.db import Database, Row
from sesflow.stats.archive.store import write_batch

MSG = "1700000000000-0"
T0 = 1_700_000_000_000


def event(kind: str, dt: int, **fields: str) -> Event:
    return Event(type=kind, ts=T0 + dt, topic="t", msg_id=MSG, index=0, **fields)  # type: ignore[arg-type]


LIFECYCLE = [
    event(EventType.SENT, 10, email="a@example.com", ses_id="ses-1"),
    event(EventType.SES_SEND, 11, email="a@example.com", ses_id="ses-1"),
    event(EventType.DELIVERY_DELAYED, 20, email="a@example.com", ses_id="ses-1"),
    event(EventType.DELIVERED, 30, email="a@example.com", ses_id="ses-1"),
    event(EventType.OPENED, 40),
    event(EventType.OPENED, 50),
    event(EventType.CLICKED, 45, url="https://example.com/"),
]


async def apply(db: Database, events: list[tuple[str, Event]]) -> None:
    batch = ArchiveBatch(0)
    for entry_id, e in events:
        batch.add(entry_id, {"e": encode(e).decode()})
    async with db.transaction() as tx:
        await write_batch(tx, batch)


async def stored(db: Database) -> Row:
    row = await db.fetchone("SELECT * FROM recipients WHERE msg_id = $1 AND idx = 0", MSG)
    assert row is not None
    return row


async def reset(db: Database) -> None:
    async with db.transaction() as tx:
        for table in ("events", "recipients", "messages", "topics"):
            await tx.execute(f"DELETE FROM {table}")


async def test_any_order_and_any_batching_give_the_same_row(archive_db: Database) -> None:
    entries = [(f"{T0}-{n}", e) for n, e in enumerate(LIFECYCLE)]
    await apply(archive_db, entries)
    expected = await stored(archive_db)
    assert (expected["state"], expected["last_event"]) == ("clicked", "opened")
    assert (expected["last_event_at_ms"], expected["sent_at_ms"]) == (T0 + 50, T0 + 10)
    assert (expected["ses_id"], expected["email"]) == ("ses-1", "a@example.com")
    rng = random.Random(14)
    for _ in range(12):
        await reset(archive_db)
        shuffled = entries[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(0, 3)))
        for start, end in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
            await apply(archive_db, shuffled[start:end])
        await apply(archive_db, shuffled[: len(shuffled) // 2])  # a redelivered batch
        assert await stored(archive_db) == expected, [e.type for _, e in shuffled]
    count = await archive_db.fetchone("SELECT count(*) AS n FROM events")
    assert count == {"n": len(entries)}


async def test_a_late_older_event_does_not_overwrite_a_newer_state(archive_db: Database) -> None:
    await apply(archive_db, [(f"{T0}-1", event(EventType.BOUNCED, 30, bounce_type="Permanent"))])
    await apply(archive_db, [(f"{T0}-0", event(EventType.SENT, 10, ses_id="ses-9"))])
    row = await stored(archive_db)
    assert (row["state"], row["last_event"], row["ses_id"]) == ("bounced", "bounced", "ses-9")
    # A later event of a lower rank is the last event, but not the state.
    await apply(archive_db, [(f"{T0}-2", event(EventType.DELIVERY_DELAYED, 40))])
    row = await stored(archive_db)
    assert (row["state"], row["last_event"], row["last_event_at_ms"]) == (
        "bounced", "delayed", T0 + 40,
    )  # fmt: skip


async def test_equal_ranks_take_the_later_event(archive_db: Database) -> None:
    await apply(archive_db, [(f"{T0}-1", event(EventType.STOPPED, 20))])
    await apply(archive_db, [(f"{T0}-0", event(EventType.FAILED, 10))])
    assert (await stored(archive_db))["state"] == "stopped"
    # A failed recipient put back (dlq replay) and then sent: `sent` outranks `failed`.
    await apply(archive_db, [(f"{T0}-3", event(EventType.REQUEUED, 30))])
    assert (await stored(archive_db))["state"] == "stopped"
    await apply(archive_db, [(f"{T0}-4", event(EventType.SENT, 40, ses_id="ses-2"))])
    row = await stored(archive_db)
    assert (row["state"], row["ses_id"], row["sent_at_ms"]) == ("sent", "ses-2", T0 + 40)


async def test_a_resend_takes_the_newer_ses_message_id(archive_db: Database) -> None:
    await apply(archive_db, [(f"{T0}-5", event(EventType.SENT, 50, ses_id="ses-new"))])
    await apply(archive_db, [(f"{T0}-1", event(EventType.SENT, 10, ses_id="ses-old"))])
    row = await stored(archive_db)
    assert (row["ses_id"], row["sent_at_ms"]) == ("ses-new", T0 + 50)


def test_a_failed_event_keeps_why_in_the_detail_column() -> None:
    from sesflow.common.schema import Event
    from sesflow.stats.archive.batch import detail_of

    rejected = Event(type="failed", reason="rejected:MessageRejected", detail="Email rejected")
    assert detail_of(rejected) == "rejected:MessageRejected: Email rejected"
    assert detail_of(Event(type="failed", reason="max_attempts")) == "max_attempts"
    assert detail_of(Event(type="bounced", detail="smtp; 550")) == "smtp; 550"
    same = Event(type="failed", reason="no_content", detail="no_content: content expired")
    assert detail_of(same) == "no_content: content expired"

"""The archive's schema, as numbered migrations applied at start.

Each migration is a version number and statements in the portable SQL of `db`; `schema_migrations`
records the versions applied. `apply_migrations` runs the missing ones in ONE transaction, after
taking a lock that makes a second process starting at the same moment wait and then find them
applied (SQLite: `BEGIN IMMEDIATE`, the database's write lock; Postgres: a transaction-scoped
advisory lock). A migration is never edited once released: a change is a new version.

Version 1, the tables (times are epoch milliseconds):

- `messages(msg_id PK, topic, subject, lane, total, accepted_at_ms, scheduled_at_ms NULL)`:
  one row per message, made by its first event; subject, lane and total come with `accepted`;
- `recipients(msg_id, idx, email, state, state_rank, ses_id, last_event, last_event_at_ms,
  sent_at_ms NULL, updated_at_ms, PK(msg_id, idx))`: a recipient's current state, the
  highest-ranked state it reached (`vocabulary.STATE_RANK`), and its latest event;
- `events(partition, entry_id, ts_ms, type, topic, msg_id, idx, n, email, ses_id, detail,
  bounce_type, bounce_subtype, url, PK(partition, entry_id))`: every event once, keyed by
  where it was in the stream (a redelivered event inserts nothing);
- `topics(topic PK, first_at_ms, last_at_ms, messages)`.

Version 2: `recipients.state_at_ms` (when the state was reached) and `last_event_rank`, the
tie-breakers of the precedence in `vocabulary`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sesflow.stats.archive.db import Database, Session

# Any constant shared by every sesflow process: the key of the Postgres advisory lock.
MIGRATION_LOCK_KEY = 0x5E5F_A5C1


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages, recipients, events, topics",
        (
            """CREATE TABLE messages (
                msg_id TEXT PRIMARY KEY,
                topic TEXT NOT NULL DEFAULT '',
                subject TEXT NOT NULL DEFAULT '',
                lane TEXT NOT NULL DEFAULT '',
                total BIGINT NOT NULL DEFAULT 0,
                accepted_at_ms BIGINT NOT NULL DEFAULT 0,
                scheduled_at_ms BIGINT NULL
            )""",
            "CREATE INDEX messages_topic ON messages (topic, accepted_at_ms, msg_id)",
            "CREATE INDEX messages_accepted ON messages (accepted_at_ms, msg_id)",
            """CREATE TABLE recipients (
                msg_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                email TEXT NOT NULL DEFAULT '',
                state TEXT NOT NULL,
                state_rank INTEGER NOT NULL,
                ses_id TEXT NOT NULL DEFAULT '',
                last_event TEXT NOT NULL,
                last_event_at_ms BIGINT NOT NULL,
                sent_at_ms BIGINT NULL,
                updated_at_ms BIGINT NOT NULL,
                PRIMARY KEY (msg_id, idx)
            )""",
            "CREATE INDEX recipients_state ON recipients (msg_id, state, idx)",
            "CREATE INDEX recipients_email ON recipients (email)",
            "CREATE INDEX recipients_ses_id ON recipients (ses_id)",
            """CREATE TABLE events (
                partition INTEGER NOT NULL,
                entry_id TEXT NOT NULL,
                ts_ms BIGINT NOT NULL,
                type TEXT NOT NULL,
                topic TEXT NOT NULL DEFAULT '',
                msg_id TEXT NOT NULL DEFAULT '',
                idx INTEGER NOT NULL DEFAULT -1,
                n INTEGER NOT NULL DEFAULT 1,
                email TEXT NOT NULL DEFAULT '',
                ses_id TEXT NOT NULL DEFAULT '',
                detail TEXT NOT NULL DEFAULT '',
                bounce_type TEXT NOT NULL DEFAULT '',
                bounce_subtype TEXT NOT NULL DEFAULT '',
                url TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (partition, entry_id)
            )""",
            "CREATE INDEX events_email ON events (email, ts_ms DESC)",
            "CREATE INDEX events_ts ON events (ts_ms)",
            """CREATE TABLE topics (
                topic TEXT PRIMARY KEY,
                first_at_ms BIGINT NOT NULL,
                last_at_ms BIGINT NOT NULL,
                messages BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX topics_recent ON topics (last_at_ms, topic)",
        ),
    ),
    Migration(
        2,
        "recipients: what ranks their state and their last event",
        (
            "ALTER TABLE recipients ADD COLUMN state_at_ms BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE recipients ADD COLUMN last_event_rank INTEGER NOT NULL DEFAULT -1",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


async def _lock(tx: Session) -> None:
    if tx.dialect == "postgres":
        await tx.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
    # SQLite: the transaction began IMMEDIATE; it holds the write lock already.


async def apply_migrations(db: Database) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied (often none)."""
    async with db.transaction() as tx:
        await _lock(tx)
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"
        )
        done = {row["version"] for row in await tx.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                int(time.time() * 1000),
            )
            applied.append(migration.version)
        return applied


async def schema_version(db: Database) -> int:
    row = await db.fetchone("SELECT max(version) AS v FROM schema_migrations")
    return int(row["v"]) if row and row["v"] is not None else 0

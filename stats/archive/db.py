"""The archive's connection layer: ONE query interface over SQLite and Postgres.

    db = await connect_archive(settings)       # or connect(Target(...)); migrated at start
    rows = await db.fetch("SELECT state, count(*) AS n FROM recipients "
                          "WHERE msg_id = $1 GROUP BY state", msg_id)
    rows[0]["state"], rows[0]["n"]              # a Row is a dict: column name -> value
    row = await db.fetchone("SELECT … WHERE msg_id = $1", msg_id)   # Row or None
    await db.execute("DELETE FROM … WHERE ts_ms < $1", cutoff)
    async with db.transaction() as tx:          # one transaction: commit on exit,
        await tx.execute(sql, *args)            # rollback on an exception
        await tx.executemany(sql, [(a, b), …])
        rows = await tx.fetch(sql, *args)
    await db.close()

Rules that make one SQL text run on both backends:

- placeholders are Postgres's `$1, $2, …` (rewritten to SQLite's `?1, ?2, …`): never write a `$`
  inside a string literal, pass the value as a parameter;
- portable SQL only: `INSERT … ON CONFLICT (…) DO NOTHING` / `DO UPDATE SET c = excluded.c`,
  `RETURNING`, `CASE` (not GREATEST / two-argument max), `LIMIT`, row values `(a, b) < ($1, $2)`
  for keyset cursors; times are integer epoch milliseconds (BIGINT), everything else TEXT or
  INTEGER; `db.dialect` ("sqlite" | "postgres") is there for the rare statement that must differ;
- alias every computed column (`count(*) AS n`): rows are keyed by column name.

Concurrency: reads outside a transaction run beside the writer (SQLite: a reader connection of
their own in WAL mode, on its own thread, so a long write never delays a look-up; Postgres: a
pool). SQLite work never runs on the event loop: each connection has one dedicated thread.
`transaction()` on SQLite is `BEGIN IMMEDIATE` (the write lock from the start, so two
processes serialise instead of failing on upgrade) and one at a time per process.

Errors: every failure of the database (down, locked, refused, a constraint) is raised as
`ArchiveUnavailable` with the driver's message; the writer retries, a look-up answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from sesflow.common.errors import ArchiveUnavailable
from sesflow.common.settings import Settings
from sesflow.stats.archive.url import Target, target

Row = dict[str, Any]
Dialect = Literal["sqlite", "postgres"]
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000  # another process holds the write lock (a migration, a prune)
POSTGRES_POOL_SIZE = 4
POSTGRES_CONNECT_TIMEOUT_S = 10.0
_PLACEHOLDER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=512)
def sqlite_sql(sql: str) -> str:
    """`$n` -> `?n`: SQLite's numbered parameters take the same values in the same order."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class Session:
    """What a transaction offers (and, through `Database`, what reads outside one offer)."""

    dialect: Dialect

    async def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None


class Database(Session):
    """A connected archive; see the module docstring."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# --- SQLite ---------------------------------------------------------------------------------


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. The switch needs the database to itself, and SQLite answers "locked" at
    once (no busy wait) while another connection is inside a transaction: try again."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteThread:
    """One SQLite connection and the one thread that ever touches it."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-sqlite")
        self.conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self.conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not self.readonly:
                wal(conn)
                # FULL: a batch is acknowledged once committed, so a commit must survive a
                # power loss too (one fsync per batch, not per event).
                conn.execute("PRAGMA synchronous = FULL")
            self.conn = conn
        return self.conn

    async def run(self, work: Any, *args: Any) -> Any:
        def call() -> Any:
            try:
                return work(self._open(), *args)
            except sqlite3.Error as exc:
                raise ArchiveUnavailable(f"sqlite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def close(self) -> None:
        def shut() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self.executor, shut)
        self.executor.shutdown(wait=False)


def _execute(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
    return _rows(conn.execute(sqlite_sql(sql), args))


def _begin(conn: sqlite3.Connection) -> None:
    # A transaction whose caller was cancelled before its ROLLBACK could be queued would make
    # every later BEGIN fail: nothing of it was committed, so end it.
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sqlite_sql(sql), rows)


class SqliteSession(Session):
    dialect: Dialect = "sqlite"

    def __init__(self, thread: SqliteThread) -> None:
        self.thread = thread

    async def execute(self, sql: str, *args: Any) -> None:
        await self.thread.run(_execute, sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.thread.run(_executemany, sql, list(rows))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self.thread.run(_execute, sql, args)
        return rows


class SqliteDatabase(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writer = SqliteThread(path)
        self.reader = SqliteThread(path, readonly=True) if path != ":memory:" else self.writer
        self.write_lock = asyncio.Lock()

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.transaction() as tx:
            await tx.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self.reader.run(_execute, sql, args)
        return rows

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self.write_lock:
            await self.writer.run(_begin)
            try:
                yield SqliteSession(self.writer)
            except BaseException:
                with contextlib.suppress(ArchiveUnavailable):
                    await asyncio.shield(self.writer.run(_execute, "ROLLBACK", ()))
                raise
            await self.writer.run(_execute, "COMMIT", ())

    async def close(self) -> None:
        await self.writer.close()
        if self.reader is not self.writer:
            await self.reader.close()


# --- Postgres -------------------------------------------------------------------------------


def _postgres_errors() -> tuple[type[BaseException], ...]:
    import asyncpg  # only where Postgres is used

    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresSession(Session):
    dialect: Dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.errors = _postgres_errors()

    async def _call(self, work: Any) -> Any:
        try:
            return await work
        except self.errors as exc:
            raise ArchiveUnavailable(f"postgres: {exc}") from exc

    async def execute(self, sql: str, *args: Any) -> None:
        await self._call(self.conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._call(self.conn.executemany(sql, list(rows)))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        records = await self._call(self.conn.fetch(sql, *args))
        return [dict(record) for record in records]


class PostgresDatabase(Database):
    dialect: Dialect = "postgres"

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.errors = _postgres_errors()

    @classmethod
    async def open(cls, dsn: str) -> PostgresDatabase:
        import asyncpg

        # ValueError: a DSN it cannot read.
        errors: tuple[type[BaseException], ...] = (*_postgres_errors(), ValueError)
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=POSTGRES_POOL_SIZE, timeout=POSTGRES_CONNECT_TIMEOUT_S
            )
        except errors as exc:
            raise ArchiveUnavailable(f"postgres: {exc}") from exc
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[PostgresSession]:
        try:
            conn = await self.pool.acquire(timeout=POSTGRES_CONNECT_TIMEOUT_S)
        except self.errors as exc:
            raise ArchiveUnavailable(f"postgres: {exc}") from exc
        try:
            yield PostgresSession(conn)
        finally:
            with contextlib.suppress(*self.errors):
                await self.pool.release(conn)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._session() as session:
            await session.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._session() as session:
            return await session.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self._session() as session:
            tx = session.conn.transaction()
            await session._call(tx.start())
            try:
                yield session
            except BaseException:
                with contextlib.suppress(*self.errors):
                    await asyncio.shield(tx.rollback())
                raise
            await session._call(tx.commit())

    async def close(self) -> None:
        with contextlib.suppress(*self.errors):
            await asyncio.wait_for(self.pool.close(), POSTGRES_CONNECT_TIMEOUT_S)


# --- opening --------------------------------------------------------------------------------


async def connect(where: Target, *, migrate: bool = True) -> Database:
    """The archive at `where`, its schema brought up to date (unless `migrate` is False)."""
    from sesflow.stats.archive.migrations import apply_migrations  # migrations import this module

    db: Database
    if where.backend == "postgres":
        db = await PostgresDatabase.open(where.dsn)
    else:
        db = SqliteDatabase(where.path)
    if migrate:
        try:
            await apply_migrations(db)
        except BaseException:
            await db.close()
            raise
    return db


async def connect_archive(settings: Settings, *, migrate: bool = True) -> Database:
    """The archive ARCHIVE_URL names (ConfigError for a URL it cannot use)."""
    return await connect(target(settings), migrate=migrate)

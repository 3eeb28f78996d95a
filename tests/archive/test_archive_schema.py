"""The connection layer and the migrations, on SQLite and on a real Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sesflow.common.errors import ArchiveUnavailable, ConfigError
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.stats.archive.db import (
    SqliteDatabase,
    _execute,
    connect,
    connect_archive,
    sqlite_sql,
)
from sesflow.stats.archive.migrations import LATEST, MIGRATIONS, apply_migrations, schema_version
from sesflow.stats.archive.url import Target, target


def archive_settings(url: str) -> Settings:
    return settings_from_mapping({"ARCHIVE_URL": url})


async def test_migrations_run_once_and_are_recorded(archive_url: str) -> None:
    db = await connect_archive(archive_settings(archive_url))
    try:
        assert await schema_version(db) == LATEST
        assert await apply_migrations(db) == []  # a second start applies nothing
        rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in rows] == [m.version for m in MIGRATIONS]
        for table in ("messages", "recipients", "events", "topics"):
            assert await db.fetch(f"SELECT * FROM {table}") == []
    finally:
        await db.close()


async def test_two_processes_starting_at_once_migrate_once(archive_url: str) -> None:
    where = target(archive_settings(archive_url))
    dbs = [await connect(where, migrate=False) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(apply_migrations(db) for db in dbs))
        assert sorted(applied, key=len) == [[], [], [m.version for m in MIGRATIONS]]
        assert await schema_version(dbs[0]) == LATEST
    finally:
        for db in dbs:
            await db.close()


async def test_one_query_interface_on_both_backends(archive_url: str) -> None:
    db = await connect_archive(archive_settings(archive_url))
    try:
        async with db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO topics (topic, first_at_ms, last_at_ms, messages) "
                "VALUES ($1, $2, $3, $4)",
                [("a", 1, 2, 3), ("b", 4, 5, 6)],
            )
            assert await tx.fetchone("SELECT count(*) AS n FROM topics") == {"n": 2}
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("DELETE FROM topics")
                raise RuntimeError("rolled back")
        rows = await db.fetch(
            "SELECT topic, messages FROM topics WHERE last_at_ms > $1 ORDER BY topic DESC", 0
        )
        assert rows == [{"topic": "b", "messages": 6}, {"topic": "a", "messages": 3}]
        await db.execute("UPDATE topics SET messages = messages + $1 WHERE topic = $2", 10, "a")
        assert await db.fetchone("SELECT messages FROM topics WHERE topic = $1", "a") == {
            "messages": 13
        }
        assert await db.fetchone("SELECT * FROM topics WHERE topic = $1", "zz") is None
        with pytest.raises(ArchiveUnavailable):  # a driver error comes out as ours
            await db.execute(
                "INSERT INTO topics (topic, first_at_ms, last_at_ms) VALUES ($1, 1, 1)", "a"
            )
    finally:
        await db.close()


def test_placeholders_become_sqlite_numbered_parameters() -> None:
    assert sqlite_sql("SELECT $1, $2 WHERE a = $10") == "SELECT ?1, ?2 WHERE a = ?10"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", Target("sqlite", path="data/archive.db")),
        ("sqlite:///rel/a.db", Target("sqlite", path="rel/a.db")),
        ("sqlite:////abs/a.db", Target("sqlite", path="/abs/a.db")),
        ("sqlite://sqlite3.db", Target("sqlite", path="sqlite3.db")),
        ("postgresql://u:p@h/db", Target("postgres", dsn="postgresql://u:p@h/db")),
        ("postgres://h/db", Target("postgres", dsn="postgres://h/db")),
    ],
)
def test_archive_url_spellings(url: str, expected: Target) -> None:
    settings = settings_from_mapping({"ARCHIVE_URL": url, "SESFLOW_DATA_DIR": "data"})
    assert target(settings) == expected


def test_database_url_is_an_alias() -> None:
    settings = settings_from_mapping({"DATABASE_URL": "sqlite://sqlite3.db"})
    assert settings.archive_url == "sqlite://sqlite3.db"
    both = settings_from_mapping({"DATABASE_URL": "sqlite://a.db", "ARCHIVE_URL": "sqlite://b.db"})
    assert both.archive_url == "sqlite://b.db"


@pytest.mark.parametrize("url", ["mysql://u:secret-pw@h/db", "/var/lib/archive.db", "sqlite://"])
def test_an_unknown_archive_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="ARCHIVE_URL") as caught:
        archive_settings(url)
    assert "secret-pw" not in str(caught.value)


def test_an_unused_archive_url_is_not_checked() -> None:
    settings = settings_from_mapping({"ARCHIVE": "off", "DATABASE_URL": "mysql://h/db"})
    assert settings.archive == "off"


async def test_a_transaction_a_cancelled_caller_left_open_is_ended(tmp_path: Path) -> None:
    """The thread ran BEGIN for a caller cancelled meanwhile: the next transaction still works
    (and what the abandoned one did is gone)."""
    db = SqliteDatabase(str(tmp_path / "archive.db"))
    try:
        await db.writer.run(_execute, "BEGIN IMMEDIATE", ())
        await db.writer.run(_execute, "CREATE TABLE abandoned (x INTEGER)", ())
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE abandoned (x INTEGER)")
            await tx.execute("INSERT INTO abandoned (x) VALUES ($1)", 1)
        assert await db.fetch("SELECT x FROM abandoned") == [{"x": 1}]
    finally:
        await db.close()

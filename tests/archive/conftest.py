from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from sesflow.common.settings import Settings
from sesflow.stats.archive.db import Database, connect_archive

from support.archivekit import FAST
from support.postgres import archive_url, postgres_server

__all__ = ["archive_url", "postgres_server"]


@pytest.fixture
def archive_settings(make_settings: Callable[..., Settings], archive_url: str) -> Settings:
    """The test's Redis and a fresh archive (SQLite, then Postgres: every test runs on both)."""
    return make_settings(ARCHIVE_URL=archive_url, **FAST)


@pytest.fixture
async def archive_db(archive_settings: Settings) -> AsyncIterator[Database]:
    db = await connect_archive(archive_settings)
    yield db
    await db.close()

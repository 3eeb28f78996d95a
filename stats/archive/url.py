"""Where the archive lives: ARCHIVE_URL (alias DATABASE_URL) read into a `Target`.

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's spelling) and
  `sqlite://file.db` (the older services' `DATABASE_URL=sqlite://sqlite3.db`): a SQLite file;
- `postgresql://…` or `postgres://…`: a Postgres DSN, handed to asyncpg as it is;
- empty: `<SESFLOW_DATA_DIR>/archive.db`.

`common.settings` refuses any other scheme at start, so `target` only raises on a URL that
did not come through the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sesflow.common.errors import ConfigError
from sesflow.common.settings import Settings, archive_url_problem

Backend = Literal["sqlite", "postgres"]
DEFAULT_FILE = "archive.db"


@dataclass(frozen=True, slots=True)
class Target:
    backend: Backend
    path: str = ""  # SQLite: the database file
    dsn: str = ""  # Postgres: the URL itself


def target(settings: Settings) -> Target:
    url = settings.archive_url.strip()
    if not url:
        return Target("sqlite", path=str(Path(settings.data_dir) / DEFAULT_FILE))
    problem = archive_url_problem(url)
    if problem:
        raise ConfigError(problem)
    scheme, _, rest = url.partition("://")
    if scheme.lower() in ("postgresql", "postgres"):
        return Target("postgres", dsn=url)
    # sqlite:///x -> "x" (relative), sqlite:////x -> "/x", sqlite://x -> "x".
    path = rest[1:] if rest.startswith("/") else rest
    return Target("sqlite", path=path.split("?", 1)[0])

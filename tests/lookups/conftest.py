from __future__ import annotations

from support.postgres import archive_url, postgres_server

__all__ = ["archive_url", "postgres_server"]

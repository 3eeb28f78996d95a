"""The history archive: every event of `events` kept in a SQL database (SQLite or Postgres).

- `url`: ARCHIVE_URL -> which backend and where;
- `db`: the connection layer, one query interface over both backends;
- `migrations`: the versioned schema, applied at start;
- `vocabulary`: how a stream event maps to the archive's event names and recipient states;
- `writer`: the `archive` consumer group, batches of events written in one transaction each;
- `prune`: removing history older than a date.
"""

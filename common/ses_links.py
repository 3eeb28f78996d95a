"""Where SES MessageId -> request id links live: fields of day-bucketed hashes
(`common.day_buckets`), written by the sender (`ses_links.lua`), read by the tracker.

Older versions wrote one key per mail (`Keys.ses_message`); the tracker still reads those until
they expire, so feedback for mail sent before an upgrade is still placed.
"""

from __future__ import annotations

from typing import Any

from sesflow.common.day_buckets import day_of, expires_at, mark_of
from sesflow.common.keys import Keys

LINK_BUCKETS = 1024  # hashes per day: listpack-small (128 fields) up to ~128k links a day

Calls = tuple[list[str], list[Any]]


def link_calls(
    keys: Keys, links: list[tuple[str, str]], now: float, retention: int, per_key: bool
) -> list[Calls]:
    """(KEYS, ARGV) of the `ses_links.lua` calls storing `links` (SES id, request id) sent at
    `now` (epoch seconds): one call, or one per hash when `per_key` (Redis Cluster: the hashes
    are on other slots)."""
    day = day_of(now)
    at = expires_at(day, retention)
    grouped: dict[str, list[tuple[bytes, str]]] = {}
    for ses_id, rid in links:
        mark = mark_of(ses_id, LINK_BUCKETS)
        grouped.setdefault(keys.ses_links(day, mark.bucket), []).append((mark.field, rid))
    items = list(grouped.items())
    batches = [[item] for item in items] if per_key else [items]
    out = []
    for batch in batches:
        names = [key for key, _ in batch]
        blob = b"".join(
            k.to_bytes(2, "big") + field + rid.encode() + b"\0"
            for k, (_, fields) in enumerate(batch, 1)
            for field, rid in fields
        )
        out.append((names, [at, blob]))
    return out


def link_lookups(keys: Keys, ses_id: str, days: list[int]) -> tuple[bytes, list[str]]:
    """The field and the hashes (one per day) where the link of `ses_id` may be."""
    mark = mark_of(ses_id, LINK_BUCKETS)
    return mark.field, [keys.ses_links(day, mark.bucket) for day in days]

"""Small marks kept by day in bucketed hashes instead of one key each.

A key costs ~100 bytes of Redis before its value; a field of a small hash (listpack-encoded
while it holds at most `hash-max-listpack-entries`, 128 by default) costs ~a dozen. So marks
that only need "present for N days" (SES MessageId -> request id links, SNS dedupe marks) are
fields of hashes named by the UTC day they were written and a bucket of their digest. A hash
expires `retention` after the end of its day, so a mark lives at least `retention` and at most
one day longer; whoever looks a mark up reads every day it may still be in.

The field is 8 bytes of a BLAKE2b digest of the id, not the id: two ids of one day and bucket
share a field with odds of ~2^-64 per pair, against 60 bytes saved per mark.
"""

from __future__ import annotations

import hashlib

import msgspec

DAY_S = 86400


class Mark(msgspec.Struct, frozen=True, gc=False):
    field: bytes  # 8 bytes
    bucket: int


def mark_of(text: str, buckets: int) -> Mark:
    digest = hashlib.blake2b(text.encode(), digest_size=12).digest()
    return Mark(digest[:8], int.from_bytes(digest[8:], "big") % buckets)


def day_of(seconds: float) -> int:
    """The UTC day (days since the epoch) of a time in seconds."""
    return int(seconds // DAY_S)


def expires_at(day: int, retention: int) -> int:
    """When the hash of `day` goes (epoch seconds): `retention` after the day ends."""
    return (day + 1) * DAY_S + retention


def days_to_read(now: float, retention: int) -> list[int]:
    """The days whose hashes may still hold a mark written within `retention` of `now`,
    newest first."""
    today = day_of(now)
    return list(range(today, day_of(now - retention) - 1, -1))

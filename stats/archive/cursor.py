"""Opaque page cursors for the archive look-ups.

A cursor is the base64url (unpadded) JSON of `[kind, *key]`: the route's kind and the sort key of
the last row of the page. The next page holds the rows strictly after that key in the route's
order, so pages neither overlap nor skip rows that existed when the first page was read. The kind
stops a cursor of one route from being replayed on another. Clients must treat cursors as opaque:
the format may change.

Every malformed cursor is an InputError (HTTP 400), never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

from sesflow.common.errors import InputError

Key = tuple[int | str, ...]
MAX_CURSOR_CHARS = 2048


def encode_cursor(kind: str, key: Sequence[int | str]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(raw: str | None, kind: str, shape: Sequence[type]) -> Key | None:
    """The key `raw` carries, its parts of the types in `shape`; None when absent or empty."""
    if not raw:
        return None
    if len(raw) > MAX_CURSOR_CHARS:
        raise invalid_cursor()
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise invalid_cursor() from None
    if not isinstance(data, list) or len(data) != len(shape) + 1 or data[0] != kind:
        raise invalid_cursor()
    key = data[1:]
    for value, want in zip(key, shape, strict=True):
        # bool is an int to Python, not to a cursor
        if type(value) is not want:
            raise invalid_cursor()
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise invalid_cursor()
    return tuple(key)


def invalid_cursor() -> InputError:
    return InputError(
        "invalid_cursor", "cursor is not one this route returned; pass next_cursor back as is"
    )

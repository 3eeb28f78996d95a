"""Custom headers a message may add (`"headers": {"X-Campaign": "spring"}`).

Names follow RFC 5322 (printable ASCII but the colon); values hold no CR, LF or other control
character but tab, so no header can inject another. The headers sesflow writes itself (addresses,
subject, threading identity, MIME structure, unsubscribe, its correlation id) and the `X-SES-*`
headers SES interprets are refused, case-insensitively: a message cannot override them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from common.errors import InputError

MAX_HEADERS = 50
MAX_NAME_CHARS = 76
MAX_LINE_CHARS = 998  # RFC 5322: a header line, name and ": " included, without folding

_NAME = re.compile(r"[!-9;-~]+")
_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

OWNED = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "return-path",
        "message-id",
        "date",
        "mime-version",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "x-request-id",
    }
)
OWNED_PREFIXES = ("content-", "x-ses-")


def is_owned(name: str) -> bool:
    folded = name.lower()
    return folded in OWNED or folded.startswith(OWNED_PREFIXES)


def check_headers(headers: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The headers as (name, value) pairs, in the order given; InputError on any bad one."""
    if not headers:
        return ()
    if len(headers) > MAX_HEADERS:
        raise InputError("invalid_header", f"{len(headers)} headers; at most {MAX_HEADERS}")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
            raise InputError(
                "invalid_header",
                f"header name {str(name)[:80]!r}: 1..{MAX_NAME_CHARS} printable ASCII "
                "characters, no colon or space",
            )
        if is_owned(name):
            raise InputError(
                "invalid_header",
                f"header {name!r} is set by sesflow (use reply_to, from_email, subject)",
            )
        if name.lower() in seen:
            raise InputError("invalid_header", f"header {name!r} is given twice")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise InputError("invalid_header", f"header {name!r}: the value must be a string")
        if _VALUE_FORBIDDEN.search(value):
            raise InputError(
                "invalid_header", f"header {name!r}: no line breaks or control characters"
            )
        if not value.strip():
            raise InputError("invalid_header", f"header {name!r} is empty")
        if len(name) + 2 + len(value.encode()) > MAX_LINE_CHARS:
            raise InputError(
                "invalid_header", f"header {name!r} is longer than {MAX_LINE_CHARS} characters"
            )
        pairs.append((name, value.strip()))
    return tuple(pairs)

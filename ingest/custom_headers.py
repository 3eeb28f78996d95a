"""Custom headers a message may add (`"headers": {"X-Campaign": "spring"}`).

What SESv2 accepts (its MessageHeader shape): a name of printable ASCII but the colon, at most
126 characters; a value of printable ASCII (space included: no CR, LF, tab or other control
character, so no header can inject another), at most 995 characters and 996 with the name; at
most 15 headers per message, of which sesflow's own per-recipient headers (X-Request-ID,
List-Unsubscribe, List-Unsubscribe-Post) take 3. Bulk mail's List-Id is added only when there is
room for it (`sender.compose`): a message that uses all 12 keeps working, without one. A message
may set its own `List-Id`; sesflow then adds none. The headers sesflow writes itself (addresses,
subject, threading identity, MIME structure, unsubscribe, its correlation id) and the `X-SES-*`
headers SES interprets are refused, case-insensitively: a message cannot override them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sesflow.common.errors import InputError

MAX_HEADERS = 12  # SES takes 15 per message; sesflow adds up to 3 per recipient
MAX_NAME_CHARS = 126
MAX_VALUE_CHARS = 995
MAX_NAME_AND_VALUE_CHARS = 996

_NAME = re.compile(r"[!-9;-~]+")
_VALUE = re.compile(r"[ -~]*")

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
        check_name(name)
        if name.lower() in seen:
            raise InputError("invalid_header", f"header {name!r} is given twice")
        seen.add(name.lower())
        pairs.append((name, checked_value(name, value)))
    return tuple(pairs)


def check_name(name: object) -> None:
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


def checked_value(name: str, value: object) -> str:
    """The value, stripped; InputError when it is not one a header may carry."""
    if not isinstance(value, str):
        raise InputError("invalid_header", f"header {name!r}: the value must be a string")
    value = value.strip()
    if not _VALUE.fullmatch(value):
        raise InputError(
            "invalid_header",
            f"header {name!r}: printable ASCII only (no line break, tab or control "
            "character; encode other text as RFC 2047 words)",
        )
    if not value:
        raise InputError("invalid_header", f"header {name!r} is empty")
    if len(value) > MAX_VALUE_CHARS or len(name) + len(value) > MAX_NAME_AND_VALUE_CHARS:
        raise InputError(
            "invalid_header",
            f"header {name!r}: at most {MAX_VALUE_CHARS} characters, "
            f"{MAX_NAME_AND_VALUE_CHARS} with the name",
        )
    return value

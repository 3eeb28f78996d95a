"""Mailing lists: what a list unsubscribe applies to, and what bulk mail's `List-Id` names.

A message names its list with `"list"` (a short token: 1 to 64 of `a-z 0-9 _ -`, starting with
a letter or digit, case-folded); without one, its list is its topic's (`default_list`): the
topic id itself when that is such a token, else `topic-` and 16 hex digits of its SHA-256, so
every topic has exactly one list and no two topics share one by accident.

`ALL_LISTS` ("*", never a valid name) is the scope of an unsubscribe that applies to every list:
what an unsubscribe recorded before lists existed became (see `common.suppression`).
"""

from __future__ import annotations

import hashlib
import re

from sesflow.common.errors import InputError

MAX_LIST_CHARS = 64
ALL_LISTS = "*"
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def is_list_name(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def check_list(name: str) -> str:
    """A given list name, case-folded; InputError when it is not a short token."""
    folded = name.strip().lower()
    if not is_list_name(folded):
        raise InputError(
            "invalid_list",
            f"list must be 1 to {MAX_LIST_CHARS} of a-z, 0-9, '_' and '-', starting with a "
            f"letter or digit, not {name[:80]!r}",
        )
    return folded


def default_list(topic: str) -> str:
    """The list of a message that names none: its topic's."""
    folded = topic.lower()
    if is_list_name(folded):
        return folded
    return "topic-" + hashlib.sha256(topic.encode()).hexdigest()[:16]


def list_of(topic: str, given: str | None) -> str:
    return check_list(given) if given else default_list(topic)


def list_id(name: str, domain: str) -> str:
    """The `List-Id` value (RFC 2919): `<name.domain>`; a list name is a valid dot-atom label."""
    return f"<{name}.{domain.strip().strip('.').lower()}>"

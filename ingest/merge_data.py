"""Merge data checks: what a message's and a recipient's `data` may hold, and that every
placeholder of the content resolves for every recipient.

A value is a string, a number or a boolean, or an object to walk into with a dotted name
(`{{user.first_name}}`); null and arrays are refused (they have no literal rendering). Top-level
names starting with `sesflow_` are reserved for what sesflow adds per recipient. Each data object
is bounded (MAX_DATA_BYTES, as compact JSON) and so is its nesting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from sesflow.common import merge
from sesflow.common.errors import InputError

MAX_DEPTH = 8
MAX_KEY_CHARS = 128
MAX_LISTED_RECIPIENTS = 10  # recipients named per missing placeholder in a 400
MAX_LISTED_PLACEHOLDERS = 20

_encoder = msgspec.json.Encoder()


def check_value(value: Any, where: str, depth: int) -> None:
    if isinstance(value, bool | int | float | str):
        if isinstance(value, float) and not math.isfinite(value):  # no literal rendering
            raise InputError("invalid_data", f"{where} is not a finite number")
        return
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise InputError("invalid_data", f"{where} nests deeper than {MAX_DEPTH} levels")
        for key, inner in value.items():
            check_key(key, where)
            check_value(inner, f"{where}.{key}", depth + 1)
        return
    kind = "null" if value is None else "an array" if isinstance(value, list) else "unsupported"
    raise InputError(
        "invalid_data",
        f"{where} is {kind}: a data value is a string, number, boolean or object",
    )


def check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InputError("invalid_data", f"{where}: keys are 1..{MAX_KEY_CHARS} characters")


def check_data(data: Any, where: str, max_bytes: int) -> str:
    """Validate one data object; returns it as compact JSON ("" when empty or None)."""
    if data is None:
        return ""
    if not isinstance(data, Mapping):
        raise InputError("invalid_data", f"{where} must be an object")
    if not data:
        return ""
    for key, value in data.items():
        check_key(key, where)
        if key.startswith(merge.RESERVED_PREFIX):
            raise InputError(
                "reserved_name", f"{where}.{key}: names starting with sesflow_ are reserved"
            )
        check_value(value, f"{where}.{key}", 1)
    encoded = _encoder.encode(data).decode()
    if len(encoded.encode()) > max_bytes:
        raise InputError("invalid_data", f"{where} exceeds {max_bytes} bytes (MAX_DATA_BYTES)")
    return encoded


def check_placeholder_names(*parts: str) -> list[str]:
    """The placeholders of the content; refuses the reserved ones."""
    names = merge.names_in(*parts)
    reserved = [name for name in names if name.startswith(merge.RESERVED_PREFIX)]
    if reserved:
        shown = ", ".join("{{" + name + "}}" for name in reserved[:MAX_LISTED_PLACEHOLDERS])
        raise InputError(
            "reserved_name", f"placeholders starting with sesflow_ are reserved: {shown}"
        )
    return names


@dataclass(slots=True)
class Missing:
    """One placeholder some recipients cannot fill."""

    name: str
    count: int = 0
    first: list[str] | None = None

    def add(self, email: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = []
        if len(self.first) < MAX_LISTED_RECIPIENTS:
            self.first.append(email)


def check_resolves(
    names: Sequence[str],
    defaults: Mapping[str, Any],
    emails: Sequence[str],
    own: Sequence[Mapping[str, Any] | None],
) -> None:
    """Every placeholder must resolve for every recipient (defaults merged with their own data);
    raises `missing_data` listing each placeholder with its count and first recipients."""
    if not names:
        return
    missing: dict[str, Missing] = {}
    # Recipients without data of their own all see the defaults: computed once.
    base_missing = merge.missing(names, defaults)
    for email, data in zip(emails, own, strict=True):
        absent = merge.missing(names, merge.merged(defaults, data)) if data else base_missing
        for name in absent:
            missing.setdefault(name, Missing(name)).add(email)
    if not missing:
        return
    total = len(emails)
    problems = [
        {"placeholder": m.name, "missing_for": m.count, "recipients": m.first or []}
        for m in list(missing.values())[:MAX_LISTED_PLACEHOLDERS]
    ]
    shown = list(missing.values())[:MAX_LISTED_PLACEHOLDERS]
    detail = "; ".join(describe(m, total) for m in shown)
    raise InputError("missing_data", detail, extra={"missing": problems})


# What a subject cannot hold: line breaks (Unicode's too) and control characters but the tab. A
# value with one would reach SES in the Subject and fail there, after the 202, not here.
LINE_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def check_subject_values(
    subject: str,
    defaults: Mapping[str, Any],
    emails: Sequence[str],
    own: Sequence[Mapping[str, Any] | None],
) -> None:
    """The values that fill the subject hold no line break or control character (the subject
    itself is checked the same way)."""
    names = merge.names_in(subject)
    if not names:
        return

    def bad_name(data: Mapping[str, Any]) -> str | None:
        for name in names:
            value = merge.lookup(data, name)
            if value is not merge.MISSING and LINE_BREAKS.search(merge.as_text(value)):
                return name
        return None

    in_defaults = bad_name(defaults)
    for email, data in zip(emails, own, strict=True):
        name = bad_name(merge.merged(defaults, data)) if data else in_defaults
        if name is not None:
            raise InputError(
                "invalid_data",
                f"{{{{{name}}}}} fills the subject of {email} with a line break or a control "
                "character, which a subject cannot hold",
            )


def describe(m: Missing, total: int) -> str:
    first = m.first or []
    scope = "resolves for no recipient, missing for" if m.count == total else "is missing for"
    more = f" and {m.count - len(first)} more" if m.count > len(first) else ""
    placeholder = "{{" + m.name + "}}"
    return f"{placeholder} {scope} {m.count} of {total}: {', '.join(first)}{more}"

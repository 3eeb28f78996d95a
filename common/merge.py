"""Merge data: the `{{name}}` placeholders of a message's subject, HTML and text parts.

A placeholder is `{{name}}`, where name is letters, digits, `_` and `.`; a dot walks into a nested
object (`{{user.first_name}}`). Any other `{{` is literal text. A recipient's data overrides the
message's data, key by key at the top level. Values are strings, numbers or booleans (or objects
to walk into with a dot), and always appear literally: HTML-escaped in the HTML part, as they are
in the subject and the text part.

Names starting with `sesflow_` are reserved for what sesflow adds per recipient (tracking URLs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\s*\}\}")
RESERVED_PREFIX = "sesflow_"

MISSING = object()


def names_in(*parts: str) -> list[str]:
    """The placeholder names used in `parts`, each once, in order of first use."""
    seen: dict[str, None] = {}
    for part in parts:
        for match in PLACEHOLDER.finditer(part):
            seen.setdefault(match.group(1), None)
    return list(seen)


def lookup(data: Mapping[str, Any], name: str) -> Any:
    """The value `name` resolves to in `data`, or `MISSING` (see `resolves`)."""
    value: Any = data
    for step in name.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return MISSING
        value = value[step]
    return value


def resolves(data: Mapping[str, Any], name: str) -> bool:
    value = lookup(data, name)
    return value is not MISSING and not isinstance(value, Mapping) and value is not None


def merged(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """A recipient's data over the message's: the recipient's top-level keys win."""
    return {**defaults, **own} if own else dict(defaults)


def as_text(value: Any) -> str:
    """How a value appears in the mail: `true`/`false` for booleans (as SES's templates render
    them), integral floats without `.0`, everything else as `str`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def missing(names: Iterable[str], data: Mapping[str, Any]) -> list[str]:
    """The names among `names` that `data` does not resolve."""
    return [name for name in names if not resolves(data, name)]

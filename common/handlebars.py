"""The part of Handlebars that SES applies to an inline template of SendEmail / SendBulkEmail
("simple substitutions"), for the local SES endpoint and the test stub: they render each entry
the way SES does, so that what a recipient would get can be checked without AWS.

- `{{path}}` inserts the value HTML-escaped (`& < > " ' ` =`, as Handlebars' escapeExpression),
  in every part: subject and text included;
- `{{{path}}}` inserts it raw;
- `\\{{` is a literal `{{` (Handlebars' escaped mustache), `\\\\{{x}}` a backslash and the value;
- a path walks into objects with dots; a missing value renders as nothing; booleans render as
  `true`/`false` and integral numbers without a fraction, as in JavaScript.

Block helpers (`{{#if}}`, `{{#each}}`...) are not rendered: sesflow never generates them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
    "`": "&#x60;",
    "=": "&#x3D;",
}
_ESCAPABLE = re.compile(r"[&<>\"'`=]")
_TOKEN = re.compile(
    r"(?P<dbl>\\\\(?=\{\{))"
    r"|(?P<esc>\\\{\{)"
    r"|\{\{\{\s*(?P<raw>[^{}\s]+)\s*\}\}\}"
    r"|\{\{\s*(?P<path>[^{}\s!#/>^&]+)\s*\}\}"
)


def escape(text: str) -> str:
    """Handlebars' escapeExpression."""
    return _ESCAPABLE.sub(lambda m: _ESCAPES[m.group(0)], text)


def as_string(value: Any) -> str:
    """How Handlebars (JavaScript) shows a value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(as_string(v) for v in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for step in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def render(template: str, data: Mapping[str, Any]) -> str:
    """`template` rendered with `data`, as SES renders an inline template."""
    out: list[str] = []
    cursor = 0
    for match in _TOKEN.finditer(template):
        out.append(template[cursor : match.start()])
        cursor = match.end()
        if match.group("dbl"):
            out.append("\\")  # an escaped backslash: the mustache after it is rendered
        elif match.group("esc"):
            # the escaped mustache stays literal up to its closing braces
            close = template.find("}}", cursor)
            end = len(template) if close < 0 else close + 2
            out.append("{{" + template[cursor:end])
            cursor = end
        elif (raw := match.group("raw")) is not None:
            out.append(as_string(lookup(data, raw)))
        else:
            out.append(escape(as_string(lookup(data, match.group("path")))))
    out.append(template[cursor:])
    return "".join(out)

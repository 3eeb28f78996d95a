"""One part of a message (subject, HTML or text) as literal pieces with per-recipient values
between them, and the same part in SES's inline-template syntax (Handlebars).

A part is compiled once per message. The data keys are sesflow's own, never the user's names:
`v<n>` for the n-th merge placeholder (its value already looked up and turned to text), and the
tracking keys the caller adds (`t`, `c<n>`). So SES only ever sees flat, plain keys, and a name
Handlebars would read otherwise (`this`, `2024`, `else`) cannot change the mail.

SES escapes `{{key}}` in every part, so the HTML part uses `{{v<n>}}` (values appear as text, never
as markup) and the subject and text parts `{{{v<n>}}}` (values as they are). Tracking URLs are
built HTML-safe by sesflow and go in raw (`{{{t}}}`). The user's own text must stay literal: a
`{` that would touch another `{` becomes `{{{lb}}}` (value `{`), and a `\\` right before a
mustache becomes `{{{bs}}}` (value `\\`), since `\\{{` and `\\\\{{` are Handlebars escapes, and a
`}` right after `{{v<n>}}` becomes `{{{rb}}}` (`{{x}}}` does not parse).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sesflow.common.handlebars import escape
from sesflow.common.merge import PLACEHOLDER

BRACE_KEY = "lb"
BACKSLASH_KEY = "bs"
CLOSE_KEY = "rb"
CONSTANTS = {BRACE_KEY: "{", BACKSLASH_KEY: "\\", CLOSE_KEY: "}"}


@dataclass(frozen=True, slots=True)
class Part:
    """len(pieces) == len(keys) + 1; key i sits between piece i and piece i + 1. `escaped[i]`:
    the value is HTML-escaped (a merge value in the HTML part)."""

    pieces: tuple[str, ...]
    keys: tuple[str, ...]
    escaped: tuple[bool, ...]
    source: str  # the part in SES syntax
    constants: frozenset[str]  # BRACE_KEY / BACKSLASH_KEY when the source uses them

    def render(self, values: Mapping[str, str]) -> str:
        """What SES makes of `source` with `values`, without asking SES."""
        if not self.keys:
            return self.pieces[0]
        out = [self.pieces[0]]
        for key, escaped, piece in zip(self.keys, self.escaped, self.pieces[1:], strict=True):
            value = values.get(key, "")
            out.append(escape(value) if escaped else value)
            out.append(piece)
        return "".join(out)


class PartBuilder:
    """Collects a part piece by piece; `names` maps placeholder names to their `v<n>` keys and is
    shared by the parts of one message."""

    def __init__(self, names: dict[str, str], *, escape_values: bool) -> None:
        self.names = names
        self.escape_values = escape_values
        self.pieces: list[str] = [""]
        self.keys: list[str] = []
        self.escaped: list[bool] = []

    def text(self, text: str) -> None:
        """User text: placeholders become value keys, the rest stays literal."""
        cursor = 0
        for match in PLACEHOLDER.finditer(text):
            self.literal(text[cursor : match.start()])
            name = match.group(1)
            key = self.names.setdefault(name, f"v{len(self.names)}")
            self._key(key, self.escape_values)
            cursor = match.end()
        self.literal(text[cursor:])

    def literal(self, text: str) -> None:
        self.pieces[-1] += text

    def raw_key(self, key: str) -> None:
        """A value sesflow builds HTML-safe itself (a tracking URL)."""
        self._key(key, False)

    def _key(self, key: str, escaped: bool) -> None:
        self.keys.append(key)
        self.escaped.append(escaped)
        self.pieces.append("")

    def build(self) -> Part:
        # tokens: (text, kind) with kind "" literal, "e" escaped mustache, "r" raw mustache
        tokens: list[tuple[str, str]] = []
        for n, piece in enumerate(self.pieces):
            tokens.extend((t, "") for t in _SPECIAL.split(piece) if t)
            if n < len(self.keys):
                key = self.keys[n]
                tokens.append(("{{" + key + "}}", "e") if self.escaped[n] else (_raw(key), "r"))
        used: set[str] = set()
        # Right to left, each literal decided against what follows it (already final).
        for i in range(len(tokens) - 1, -1, -1):
            text, kind = tokens[i]
            if kind:
                continue
            after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            before = tokens[i - 1] if i else ("", "")
            key = ""
            if text == "{" and after[0].startswith("{"):
                key = BRACE_KEY  # `{{` would open a mustache
            elif text == "\\" and after[1]:
                key = BACKSLASH_KEY  # `\{{` and `\\{{` are Handlebars escapes
            elif text == "}" and before[1] == "e":
                key = CLOSE_KEY  # `{{x}}}` does not parse
            if key:
                tokens[i] = (_raw(key), "r")
                used.add(key)
        return Part(
            pieces=tuple(self.pieces),
            keys=tuple(self.keys),
            escaped=tuple(self.escaped),
            source="".join(text for text, _ in tokens),
            constants=frozenset(used),
        )


_SPECIAL = re.compile(r"([{}\\])")


def _raw(key: str) -> str:
    return "{{{" + key + "}}}"

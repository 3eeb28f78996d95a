"""One result of `sesflow check`: what was checked, how it stands, and the fix beside it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str  # ok | warn | fail | skip
    detail: str
    hint: str = ""  # the command or console step that fixes it (warn and fail)

"""Types shared by the CLI tests (a module of its own: test folders have no __init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SENDER = "noreply@sesflow.test"
REGION = "us-east-1"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Sesflow = Callable[..., Result]

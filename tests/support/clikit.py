"""What the CLI tests share: the sender address, the region, and how a run is reported."""

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

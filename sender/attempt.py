"""One job on its way through the sender: what it is, what is stored for it now, and how its
tries went so far. The per-job path (`Sender.process`) and a read batch (`sender.read_batch`)
carry one `Attempt` per job from the pre-check to the record, so that every step takes the job
whole rather than its pieces one by one.

`held` is the state the record (or the next claim) expects to find: QUEUED, the claim of a sender
that died in the ambiguous window (ON_AMBIGUOUS=resend takes it over), or this attempt's own
claim while it stands. It changes only when Redis has said so: a granted claim, a release.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from sesflow.common.keys import PartitionKeys
from sesflow.common.schema import TRANSACTIONAL, Job, MessageContent
from sesflow.sender.state import QUEUED, DeliveryState


class LeavePending(Exception):
    """Stop handling a job without acknowledging it: shutdown came before its SES call, or
    another sender holds a fresh claim on it."""


def utf8_fields(fields: dict[str, str]) -> dict[str, str]:
    """The fields as they are, or ValueError: the client decodes with surrogateescape, so bytes
    that are not UTF-8 arrive as lone surrogates, and such an entry is not a job."""
    for name, value in fields.items():
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"entry is not UTF-8: {fields!r}") from exc
    return fields


class Step(Enum):
    """What the per-job loop does after an outcome."""

    RETRY = auto()  # take a new slot and claim again (nothing is claimed now)
    DONE = auto()  # the job is recorded (or acknowledged): this process is done with it


@dataclass(slots=True)
class Attempt:
    part: PartitionKeys
    entry_id: str
    job: Job
    deliveries: int = 1  # times the entry was delivered (XPENDING), for MAX_ATTEMPTS
    accepted: int = 0  # when its message was accepted (ms): a later topic stop stops it
    content: MessageContent | None = None
    email: Any = None  # what `compose` made of it (sender.compose.Email)
    scopes: tuple[str, ...] = ()  # the SES setups it uses (sender.setup_faults)
    held: DeliveryState = QUEUED
    started: float = 0.0  # time.monotonic() when its latest SES call began
    transient: int = 0  # transient or ambiguous outcomes in a row
    throttled: int = 0  # throttled outcomes in a row

    @property
    def topic(self) -> str:
        return self.content.topic if self.content else ""

    @property
    def urgent(self) -> bool:
        """Transactional mail takes the first rate slots of its process."""
        return self.content is not None and self.content.lane == TRANSACTIONAL


@dataclass(frozen=True, slots=True)
class Verdict:
    """A final state decided without calling SES, with its event's detail and, when the entry
    goes to the dead letters too, the reason written there."""

    final: DeliveryState
    detail: str = ""
    dead: str | None = None

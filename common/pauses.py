"""Paused bulk sending: one topic, or all of it. Written by the pause API and the reputation
guard, obeyed by the pump (`pause.lua`, `pump.lua`).

A pause lives in every partition's `{p}:paused` hash (field = topic, or ALL_BULK), beside the
backlogs it holds back, so one script per partition pauses atomically, also on Redis Cluster.
Every partition holds the same entry; reads use partition 0. The first pause's reason stays
until resume: a manual pause does not hide a guard trip, nor the reverse. Resuming is always
explicit.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from sesflow.common import scripts
from sesflow.common.keys import Keys

ALL_BULK = ""  # the field that pauses every bulk topic: no topic id is empty

Reason = Literal["manual", "bounce_rate", "complaint_rate"]


class Pause(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    reason: str
    at: int  # epoch ms
    # What tripped the reputation guard: {"sent", "bounced_hard", "complained", "rate", ...}.
    figures: dict[str, float] = msgspec.field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """The fields GET /v1/topics/{id} and the pause routes answer with."""
        out: dict[str, Any] = {"paused": True, "paused_reason": self.reason, "paused_at": self.at}
        if self.figures:
            out["paused_figures"] = self.figures
        return out


NOT_PAUSED: dict[str, Any] = {"paused": False, "paused_reason": None, "paused_at": None}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Pause).decode


def decode(raw: str | bytes | None) -> Pause | None:
    if not raw:
        return None
    try:
        return _decode(raw)
    except msgspec.DecodeError:  # written by something else: still paused, for an unknown reason
        return Pause(reason="unknown", at=0)


class Pauses:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.script = scripts.register(client, "pause")

    async def pause(
        self, topic: str, reason: Reason, figures: dict[str, float] | None = None
    ) -> tuple[Pause, bool]:
        """(the pause in force, whether this call made it): an earlier pause is kept."""
        mine = Pause(reason=reason, at=int(time.time() * 1000), figures=figures or {})
        payload = _encode(mine)
        current = b""
        for p in self.keys.partitions:
            current = await self.script(keys=p.pause_keys(topic), args=["pause", topic, payload])
        kept = decode(current) or mine
        return kept, kept == mine

    async def resume(self, topic: str) -> bool:
        """Whether it was paused."""
        was = await self.get(topic)
        for p in self.keys.partitions:
            await self.script(keys=p.pause_keys(topic), args=["resume", topic, ""])
        return was is not None

    async def get(self, topic: str) -> Pause | None:
        return decode(await self.client.hget(self.keys.partition(0).paused, topic))

    async def all(self) -> dict[str, Pause]:
        """Every pause in force, by topic (ALL_BULK for all bulk sending)."""
        raw = await self.client.hgetall(self.keys.partition(0).paused)
        pauses = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            pause = decode(value)
            if pause is not None:
                pauses[name] = pause
        return pauses

"""Setups paused by a setup fault, as stored in Redis (`Keys.setup_paused`): written by the
senders (`sender.setup_faults`), read by them and by stats for the dashboard's alert."""

from __future__ import annotations

from typing import Any, cast

import msgspec

from sesflow.common.connection import Redis
from sesflow.common.keys import Keys

MESSAGE_BYTES = 500


class SetupPause(msgspec.Struct, frozen=True, kw_only=True):
    """The first fault of a pause: what is broken (`scope`, `reason`) and what SES said."""

    scope: str
    reason: str
    code: str
    message: str = ""
    since_ms: int = 0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SetupPause)


def encode_pause(pause: SetupPause) -> bytes:
    return _encoder.encode(pause)


def decode_pause(scope: str, raw: str) -> SetupPause:
    """A stored pause; one that cannot be read still pauses (and shows what it holds)."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return SetupPause(scope=scope, reason="unknown", code="", message=raw[:MESSAGE_BYTES])


async def read_pauses(client: Redis, keys: Keys) -> dict[str, SetupPause]:
    raw = cast(dict[str, str], await client.hgetall(keys.setup_paused))
    return {scope: decode_pause(scope, value) for scope, value in raw.items()}


async def pauses_view(client: Redis, keys: Keys) -> list[dict[str, Any]]:
    """The paused setups as JSON-ready dicts, oldest first (the stats overview)."""
    pauses = sorted((await read_pauses(client, keys)).values(), key=lambda p: p.since_ms)
    return [msgspec.to_builtins(p) for p in pauses]

"""Stream upkeep shared by every consumer: trim what every group has read and acknowledged,
never an entry still pending for one of them."""

from __future__ import annotations

from redis.exceptions import ResponseError

from sesflow.common.connection import Redis

# Dead letters kept for inspection per dead-letter stream (an approximate cap: a flood of bad
# entries must not fill Redis).
DEAD_LETTER_MAXLEN = 100_000


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream entry ID as a comparable (milliseconds, sequence) pair."""
    ms, _, seq = str(entry_id).partition("-")
    return int(ms or 0), int(seq or 0)


async def needed_floor(client: Redis, stream: str) -> str | None:
    """The lowest entry ID some consumer group still needs: its oldest pending entry, or the
    entry just after its last-delivered one when nothing is pending. None when there is no
    stream, no group, or a group that has read nothing (then nothing may go)."""
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return None
    floor: tuple[int, int] | None = None
    for group in groups:
        ms, seq = parse_id(group["last-delivered-id"])
        needed = (ms, seq + 1)
        if int(group["pending"]):
            summary = await client.xpending(stream, group["name"])
            if summary["min"]:  # None when the last pending entry was acknowledged meanwhile
                needed = min(needed, parse_id(summary["min"]))
        floor = needed if floor is None else min(floor, needed)
    if floor is None or floor <= (0, 1):
        return None
    return f"{floor[0]}-{floor[1]}"


async def trim_acknowledged(client: Redis, stream: str) -> int:
    """XTRIM MINID at `needed_floor`; returns how many entries went."""
    floor = await needed_floor(client, stream)
    if floor is None:
        return 0
    return int(await client.xtrim(stream, minid=floor, approximate=False))

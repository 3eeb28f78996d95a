"""What every consumer group of a deployment has yet to finish, read from Redis.

Once every group has acknowledged everything it read, nothing more happens on its own: no
sender holds a job it could still send, no reclaim can hand one out again. A test waits for that
point, instead of sleeping, before it checks that something did not happen.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from sesflow.common.keys import DISPATCH_GROUP, SENDERS_GROUP, STATS_GROUP, Keys

from support.until import until

KEYS = Keys("sesflow")


async def leftovers(client: aioredis.Redis, keys: Keys = KEYS) -> dict[str, int]:
    """What is still unacknowledged by each group, and jobs that were dead-lettered."""
    found = {"requests": int((await client.xpending(keys.requests, DISPATCH_GROUP))["pending"])}
    for part in keys.partitions:
        found[f"sends/{part.index}"] = int(
            (await client.xpending(part.sends, SENDERS_GROUP))["pending"]
        )
        found[f"events/{part.index}"] = int(
            (await client.xpending(part.events, STATS_GROUP))["pending"]
        )
        found[f"sends_dead/{part.index}"] = int(await client.xlen(part.sends_dead))
    return found


async def settled(client: aioredis.Redis, keys: Keys = KEYS, within: float = 15.0) -> None:
    """Until no group has anything pending (dead-lettered jobs aside)."""
    await until(
        lambda: leftovers(client, keys),
        lambda found: not any(v for k, v in found.items() if not k.startswith("sends_dead")),
        what="every consumer group to acknowledge what it read",
        within=within,
    )

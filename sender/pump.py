"""The pump: keeps each partition's `sends` stream a fraction of a second deep, from the bulk
backlogs (`pump.lua`, which holds the fair share and the transactional cap).

Every sender replica runs one; each call is one atomic script that adds only what is missing,
so any number of pumps keep the same depth. The depth is AHEAD_S of the rate a partition gets
(at least MIN_DEPTH, at most MAX_DEPTH jobs): deep enough that readers never wait on the pump,
shallow enough that a transactional job queued behind it waits a tenth of a second, and that a
pause or a new topic takes effect within that much mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

from sesflow.common import scripts
from sesflow.common.connection import UNAVAILABLE
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

AHEAD_S = 0.1
MIN_DEPTH = 16
MAX_DEPTH = 1000
QUANTUM = 10  # jobs taken from one topic per turn: topics interleave finely
BUSY_INTERVAL_S = 0.02  # while a backlog moves: a quarter of AHEAD_S
IDLE_INTERVAL_S = 0.1  # nothing to move: how soon a new bulk message starts
OUTAGE_INTERVAL_S = 1.0


def target_depth(settings: Settings) -> int:
    per_partition = settings.email_rate / max(1, settings.send_partitions)
    return max(MIN_DEPTH, min(MAX_DEPTH, math.ceil(per_partition * AHEAD_S)))


class Pump:
    def __init__(self, settings: Settings, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.target = target_depth(settings)
        self.share = settings.transactional_max_share
        self.script = scripts.register(client, "pump")

    async def once(self) -> int:
        """Top up every partition once; returns the jobs moved."""
        moved = 0
        for p in self.keys.partitions:
            reply = await self.script(
                keys=p.pump_keys(),
                args=[SENDERS_GROUP, self.target, QUANTUM, f"{p.prefix}backlog:", self.share],
            )
            moved += int(reply[0])
        return moved

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                interval = BUSY_INTERVAL_S if await self.once() else IDLE_INTERVAL_S
            except UNAVAILABLE:
                interval = OUTAGE_INTERVAL_S  # the sender's own loops report the outage
            except Exception:  # a bug must not stop the pump for good: log, go on
                log.exception("pump failed")
                interval = OUTAGE_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

"""Message content, loaded once per message per process: it is immutable once the dispatcher has
stored it, and a campaign's thousands of jobs share it, so an LRU of the last messages saves a
multi-megabyte HGETALL per recipient. Concurrent first loads of one message share one request."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import cast

from sesflow.common.connection import Redis
from sesflow.common.keys import PartitionKeys
from sesflow.common.schema import MessageContent

DEFAULT_SIZE = 256


class ContentCache:
    def __init__(self, client: Redis, size: int = DEFAULT_SIZE) -> None:
        self.client = client
        self.size = size
        self._entries: OrderedDict[str, asyncio.Task[MessageContent | None]] = OrderedDict()

    async def get(self, part: PartitionKeys, msg_id: str) -> MessageContent | None:
        """The content, or None when it is missing (expired or never stored)."""
        task = self._entries.get(msg_id)
        if task is None:
            task = asyncio.create_task(self._load(part, msg_id))
            self._entries[msg_id] = task
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(msg_id)
        try:
            # shield: one waiter being cancelled must not cancel the load the others share
            content = await asyncio.shield(task)
        except Exception:
            self._forget(msg_id, task)
            raise
        if content is None:
            self._forget(msg_id, task)  # it may be stored later; never cache an absence
        return content

    def _forget(self, msg_id: str, task: asyncio.Task[MessageContent | None]) -> None:
        if self._entries.get(msg_id) is task:
            del self._entries[msg_id]

    async def _load(self, part: PartitionKeys, msg_id: str) -> MessageContent | None:
        data = cast(dict[str, str], await self.client.hgetall(part.message(msg_id)))
        try:
            return MessageContent.from_hash(msg_id, data)
        except ValueError:
            return None

"""Group commit for the sender's Redis calls: the jobs of one replica that reach the same step
together (one XREADGROUP batch being pre-checked, a grant of several rate slots, SES answers
arriving within one event-loop turn) share one round trip instead of one each.

A call goes out at once when nothing of its kind is in flight for that key; calls that arrive
while one is in flight wait for it and then go out together (at most one in flight per key), so
a lone job waits for nobody and a busy replica's batches grow with its load. The key is the
partition: every key a batched script touches has that partition's hash tag, so one script call
is one slot on Redis Cluster.

A failed call fails every job of the batch with the same exception; each job retries on its
own exactly as it did alone (the scripts are idempotent per job)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

MAX_BATCH = 256


class Batcher(Generic[I, R]):
    def __init__(
        self,
        run: Callable[[Hashable, list[I]], Awaitable[list[R]]],
        *,
        skip_cancelled: bool,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """`run(key, items)` answers one result per item, in order. `skip_cancelled`: drop the
        items whose caller went away before the call (a claim nobody would use); a record is
        written even then (the SES call happened)."""
        self._run = run
        self._skip_cancelled = skip_cancelled
        self._max = max_batch
        self._queues: dict[Hashable, list[tuple[I, asyncio.Future[R]]]] = {}
        self._drainers: dict[Hashable, asyncio.Task[None]] = {}

    async def submit(self, key: Hashable, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        if key not in self._drainers:
            # runs on the next loop turn: the jobs woken in this one join the batch
            self._drainers[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                if self._skip_cancelled:
                    batch = [(item, fut) for item, fut in batch if not fut.done()]
                    if not batch:
                        continue
                try:
                    results = await self._run(key, [item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                except BaseException:
                    for _, fut in batch + queue:
                        fut.cancel()
                    queue.clear()
                    raise
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            del self._drainers[key]

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
        # one future per caller, who may bring several items (a read batch's jobs)
        self._queues: dict[Hashable, list[tuple[list[I], asyncio.Future[list[R]]]]] = {}
        self._drainers: dict[Hashable, asyncio.Task[None]] = {}

    async def submit(self, key: Hashable, item: I) -> R:
        return (await self.submit_many(key, [item]))[0]

    async def submit_many(self, key: Hashable, items: list[I]) -> list[R]:
        """One result per item, in order; the items go in one call (with others' if any)."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((items, future))
        if key not in self._drainers:
            # runs on the next loop turn: the jobs woken in this one join the batch
            self._drainers[key] = asyncio.create_task(self._drain(key))
        return await future

    def _take(
        self, queue: list[tuple[list[I], asyncio.Future[list[R]]]]
    ) -> list[tuple[list[I], asyncio.Future[list[R]]]]:
        """The callers of the next call: whole callers, up to max_batch items (at least one)."""
        size = 0
        end = 0
        while end < len(queue) and (end == 0 or size + len(queue[end][0]) <= self._max):
            size += len(queue[end][0])
            end += 1
        batch = queue[:end]
        del queue[:end]
        return batch

    async def _drain(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                batch = self._take(queue)
                if self._skip_cancelled:
                    batch = [(items, fut) for items, fut in batch if not fut.done()]
                if batch:
                    await self._run_batch(key, batch, queue)
        finally:
            del self._drainers[key]

    async def _run_batch(
        self,
        key: Hashable,
        batch: list[tuple[list[I], asyncio.Future[list[R]]]],
        queue: list[tuple[list[I], asyncio.Future[list[R]]]],
    ) -> None:
        """One call for `batch`; each caller gets its own slice of the results (or the error).
        Cancelled: every caller still queued is cancelled too."""
        try:
            if len(batch) == 1:
                results = await self._run(key, batch[0][0])
            else:
                results = await self._run(key, [i for items, _ in batch for i in items])
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except BaseException:
            for _, fut in batch + queue:
                fut.cancel()
            queue.clear()
            raise
        start = 0
        for items, fut in batch:
            end = start + len(items)
            if not fut.done():
                fut.set_result(results[start:end])
            start = end

"""sesflow.sender.batching.Batcher: one call per key in flight, the rest joins the next one; a
failure reaches every job of its batch; a cancelled caller's item is dropped only where asked."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from sesflow.sender.batching import Batcher


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, key: Hashable, items: list[int]) -> list[int]:
        self.calls.append((key, list(items)))
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis gone")
        return [item * 10 for item in items]


async def test_callers_of_one_moment_share_a_call_per_key() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.run, skip_cancelled=True)
    results = await asyncio.gather(*(batcher.submit(n % 2, n) for n in range(6)))
    assert results == [0, 10, 20, 30, 40, 50]
    assert sorted(rec.calls) == [(0, [0, 2, 4]), (1, [1, 3, 5])]


async def test_callers_during_a_call_go_together_in_the_next() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher: Batcher[int, int] = Batcher(rec.run, skip_cancelled=True)
    first = asyncio.ensure_future(batcher.submit("p", 1))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(batcher.submit("p", n)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    assert rec.calls == [("p", [1])]  # at most one in flight
    rec.gate.set()
    assert [await first, *[await f for f in later]] == [10, 20, 30]
    assert rec.calls == [("p", [1]), ("p", [2, 3])]


async def test_a_failure_reaches_every_caller_of_the_batch() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder(fail=True).run, skip_cancelled=False)
    results = await asyncio.gather(
        *(batcher.submit("p", n) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    # the batcher is usable again afterwards (each caller retries on its own)
    ok: Batcher[int, int] = Batcher(Recorder().run, skip_cancelled=False)
    assert await ok.submit("p", 4) == 40


@pytest.mark.parametrize("skip", [True, False])
async def test_a_cancelled_caller_is_dropped_only_when_asked(skip: bool) -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher: Batcher[int, int] = Batcher(rec.run, skip_cancelled=skip)
    busy = asyncio.ensure_future(batcher.submit("p", 1))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(batcher.submit("p", 2))
    kept = asyncio.ensure_future(batcher.submit("p", 3))
    await asyncio.sleep(0)
    gone.cancel()
    rec.gate.set()
    assert (await busy, await kept) == (10, 30)
    assert rec.calls[1] == ("p", [3] if skip else [2, 3])


async def test_a_caller_with_several_items_gets_one_result_each_in_one_call() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher: Batcher[int, int] = Batcher(rec.run, skip_cancelled=True, max_batch=4)
    busy = asyncio.ensure_future(batcher.submit("p", 1))
    await asyncio.sleep(0.01)
    many = asyncio.ensure_future(batcher.submit_many("p", [2, 3, 4]))
    more = asyncio.ensure_future(batcher.submit_many("p", [5, 6]))
    await asyncio.sleep(0)
    rec.gate.set()
    assert (await busy, await many, await more) == (10, [20, 30, 40], [50, 60])
    # a caller's items are never split between calls; the next caller waits for the next call
    assert rec.calls == [("p", [1]), ("p", [2, 3, 4]), ("p", [5, 6])]

"""A grid point's jobs of several partitions: one claim each, at once (`sender.read_batch`)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from redis.exceptions import ResponseError

from sesflow.common.keys import Keys, PartitionKeys
from sesflow.sender.read_batch import GridPoints

KEYS = Keys("sesflow", 3)


def points_claiming(claim: Any, monkeypatch: pytest.MonkeyPatch) -> GridPoints:
    points = GridPoints(cast(Any, None))  # only `claim` runs here, and it is replaced
    monkeypatch.setattr(points, "claim", claim)
    return points


async def test_a_failed_partition_leaves_the_others_claims_to_be_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One partition's claim fails (an error reply, not an outage) while another's is still on
    its way: claim_all waits for it and hands its jobs on to be sent. Left behind, their stored
    claims would be found ambiguous by a reclaim, for mail SES never saw."""
    ended: list[int] = []

    async def claim(part: PartitionKeys, ready: list[Any]) -> list[Any]:
        if part.index == 0:
            raise ResponseError("READONLY You can't write against a read only replica.")
        await asyncio.sleep(0.05 * part.index)
        ended.append(part.index)
        return ready

    points = points_claiming(claim, monkeypatch)
    ready = {KEYS.partition(n): [f"job{n}a", f"job{n}b"] for n in range(3)}
    result: Any = await points.claim_all(cast(Any, ready))
    claimed, failure = result
    assert ended == [1, 2]
    assert claimed == ["job1a", "job1b", "job2a", "job2b"]
    assert isinstance(failure, ResponseError)


async def test_every_partition_claimed_is_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    async def claim(part: PartitionKeys, ready: list[Any]) -> list[Any]:
        return ready[:1]  # the other job: busy elsewhere

    points = points_claiming(claim, monkeypatch)
    ready = {KEYS.partition(n): [f"job{n}a", f"job{n}b"] for n in range(2)}
    both: Any = await points.claim_all(cast(Any, ready))
    assert both == (["job0a", "job1a"], None)
    one: Any = await points.claim_all(cast(Any, {KEYS.partition(2): ["job2a", "job2b"]}))
    assert one == (["job2a"], None)

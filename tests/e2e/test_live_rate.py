"""The dashboard's figures tell the truth, with every role a real process: at an EMAIL_RATE the SES
stub enforces, the send rate stats reports in steady state is within 10% of what the stub
receives, and a topic's ETA is within 25% of the time it actually takes to finish.

Ratios against the stub, not timings: the stub's own count of accepted recipients, sampled as it
goes, is the reference for both."""

from __future__ import annotations

import asyncio
import bisect
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sesflow.cli.local_ses import LOCAL_CREDENTIALS

from support.procs import Cluster
from support.sesstub import SesStub
from support.until import until

pytestmark = pytest.mark.slow

RATE = 20
RECIPIENTS = 800  # 40 s at RATE: a steady state long enough to read it several times
TOPIC = "steady"
WINDOW_S, SETTLE_S = 10, 2  # the API's rate window, ending this long ago (STATS_FLUSH 0.2 s)


class Samples:
    """(time, recipients the stub accepted so far), taken every 0.1 s."""

    def __init__(self, stub: SesStub) -> None:
        self.stub = stub
        self.times: list[float] = []
        self.sent: list[int] = []

    async def run(self) -> None:
        while True:
            self.times.append(time.time())
            self.sent.append(self.stub.sent)
            await asyncio.sleep(0.1)

    def at(self, t: float) -> int:
        """Accepted by time t (the last sample taken at or before it)."""
        k = bisect.bisect_right(self.times, t) - 1
        assert k >= 0, "no sample that early"
        return self.sent[k]

    def rate(self, start: float, end: float) -> float:
        return (self.at(end) - self.at(start)) / (end - start)

    def last(self) -> int:
        return self.sent[-1] if self.sent else 0

    def finished_at(self, total: int) -> float:
        return self.times[next(k for k, n in enumerate(self.sent) if n >= total)]


async def test_send_rate_and_eta_match_what_ses_receives(redis_url: str, tmp_path: Path) -> None:
    async with SesStub(rate=RATE) as stub:
        cluster = Cluster(
            redis_url,
            tmp_path / "logs",
            SES_ENDPOINT_URL=stub.url,
            AWS_REGION="us-east-1",
            EMAIL_SENDER="news@example.com",
            EMAIL_RATE=str(RATE),
            **LOCAL_CREDENTIALS,
        )
        await asyncio.to_thread(cluster.start_all, 1)
        samples = Samples(stub)
        sampler = asyncio.create_task(samples.run())
        try:
            async with aiohttp.ClientSession() as http:
                await check_rate_and_eta(cluster, stub, samples, http)
        finally:
            sampler.cancel()
            await asyncio.to_thread(cluster.stop_all)


async def check_rate_and_eta(
    cluster: Cluster, stub: SesStub, samples: Samples, http: aiohttp.ClientSession
) -> None:
    ingest, stats = cluster.url("ingest"), cluster.url("stats")
    message = {
        "topic_id": TOPIC,
        "emails": [f"reader{n:04d}@example.com" for n in range(RECIPIENTS)],
        "subject": "Steady",
        "content": "<p>Hello</p>",
    }
    async with http.post(f"{ingest}/v1/messages", json={"messages": [message]}) as resp:
        assert resp.status == 202, await resp.text()

    async def overview() -> dict[str, Any]:
        async with http.get(f"{stats}/v1/stats/overview") as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    # Steady state: the whole rate window lies after the first sends.
    await until(
        lambda: asyncio.sleep(0, stub.sent),
        lambda n: n >= RATE * 14,
        what="14 s of sends at RATE",
        within=60,
        every=0.2,
    )
    readings = []
    for _ in range(4):
        data = await overview()
        readings.append(data)
        await asyncio.sleep(3)
    for data in readings:
        at = data["generated_at"] / 1000
        received = samples.rate(int(at) - SETTLE_S - WINDOW_S, int(at) - SETTLE_S)
        assert data["rate_window_s"] == WINDOW_S
        assert received > 0.5 * RATE, (received, stub.stats())  # truly steady
        assert data["send_rate"] == pytest.approx(received, rel=0.10), (data["send_rate"], received)
        (row,) = data["topics"]
        assert row["send_rate"] == pytest.approx(data["send_rate"], rel=1e-6)  # its whole share

    last = readings[-1]
    (row,) = last["topics"]
    assert not row["done"] and row["eta_seconds"] is not None, row
    # Until the sampler has seen the last one go out (not only the stub), so it knows when.
    await until(
        lambda: asyncio.sleep(0, samples.last()),
        lambda n: n >= RECIPIENTS,
        what="the sampler to see every recipient sent",
        within=90,
        every=0.2,
    )
    actual = samples.finished_at(RECIPIENTS) - last["generated_at"] / 1000
    assert actual > 5, actual  # read well before the end, or the check means little
    assert row["eta_seconds"] == pytest.approx(actual, rel=0.25), (row, actual)

    # Once it is over, the topic is done and the rate falls to nothing: no stale figure lingers.
    data = await until(
        overview,
        lambda d: d["send_rate"] == 0 and d["topics"][0]["done"],
        what="the rate to fall to 0 and the topic to be done",
        within=WINDOW_S + 10,
        every=0.2,
    )
    assert data["topics"][0]["eta_seconds"] is None
    assert data["totals"]["sent"] == RECIPIENTS == stub.sent

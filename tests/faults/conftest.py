"""Fixtures of the fault suite: the SES stub process, clusters of role processes, and a Redis of
the test's own (with AOF) for the cases that stop and start it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sesflow.cli.embedded import RedisProcess

from support.faultkit import cluster_env
from support.procs import Cluster
from support.stubprocess import StubProcess


@pytest.fixture
def make_stub(tmp_path: Path) -> Iterator[Callable[..., StubProcess]]:
    started: list[StubProcess] = []

    def make(**options: Any) -> StubProcess:
        stub = StubProcess(tmp_path / "logs", **options).start()
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.stop()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`make_cluster(redis_url, stub, **ENV)`: a Cluster whose roles use the stub as SES; every
    process it started is stopped at the end (SIGTERM, then SIGKILL after 15 s)."""
    made: list[Cluster] = []

    def make(redis_url: str, stub: StubProcess, **env: str) -> Cluster:
        cluster = Cluster(redis_url, tmp_path / "logs", **cluster_env(stub, **env))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server with AOF (everysec) that only this test uses, so it may stop and start it
    on the same port and data directory."""
    server = RedisProcess(tmp_path / "aof-redis", aof=True).start()
    assert server.port != 6379
    yield server
    server.stop()

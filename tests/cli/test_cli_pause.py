"""`sesflow pause` and `sesflow resume` against a real ingest process: a topic, all bulk, and
the errors an operator may meet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sesflow.common.keys import Keys

from support.clikit import Sesflow
from support.procs import Cluster

PAUSED = Keys().partition(0).paused
API_KEY = "cli-pause-api-key"


@pytest.fixture
def ingest(redis_url: str, tmp_path: Path) -> Iterator[list[str]]:
    cluster = Cluster(redis_url, tmp_path / "logs", API_KEY=API_KEY)
    cluster.start("ingest")
    cluster.wait_listening(["ingest"])
    yield ["--ingest-url", cluster.url("ingest")]
    cluster.stop_all()


def test_pause_and_resume_a_topic_and_all_bulk(
    sesflow: Sesflow, ingest: list[str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", API_KEY)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    res = sesflow("pause", "news", *ingest)
    assert res.code == 0, res.err
    assert "'news' paused since" in res.out and "reason: manual" in res.out
    assert json.loads(str(client.hget(PAUSED, "news")))["reason"] == "manual"

    res = sesflow("pause", "news", *ingest, "--json")  # again: the first pause stays
    answer = json.loads(res.out)
    assert res.code == 0 and answer["paused"] is True and answer["paused_reason"] == "manual"

    res = sesflow("resume", "news", *ingest)
    assert res.code == 0 and "'news' is not paused" in res.out
    assert not client.hexists(PAUSED, "news")

    res = sesflow("pause", "--all", *ingest)
    assert res.code == 0 and "all bulk mail paused since" in res.out
    assert client.hexists(PAUSED, "")
    res = sesflow("resume", "--all", *ingest, "--json")
    assert res.code == 0 and json.loads(res.out)["paused"] is False
    assert not client.hexists(PAUSED, "")


def test_pause_needs_one_topic_or_all_and_reports_refusals(
    sesflow: Sesflow, ingest: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sesflow("pause", *ingest).code == 2
    assert sesflow("resume", "news", "--all", *ingest).code == 2
    monkeypatch.setenv("API_KEY", "wrong-cli-api-key")
    res = sesflow("pause", "news", *ingest)
    assert res.code == 1 and "unauthorized" in res.err


def test_ingest_down_is_a_clear_error(sesflow: Sesflow) -> None:
    from sesflow.cli.embedded import free_port

    res = sesflow("pause", "news", "--ingest-url", f"http://127.0.0.1:{free_port()}")
    assert res.code == 3 and "cannot reach the ingest API" in res.err

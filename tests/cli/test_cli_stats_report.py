from __future__ import annotations

import json
import time

import pytest
import redis as syncredis

from sesflow.cli import main as cli_main
from sesflow.cli.local_env import up_env_file
from sesflow.common.keys import Keys
from sesflow.common.settings import load_settings

from support.clikit import Sesflow

NOW_MS = int(time.time() * 1000)


def store_counters(redis_url: str) -> None:
    """Counters as the stats role leaves them, for two topics and the global hash."""
    p = Keys().partition(0)
    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(
        p.stats_topic("june"),
        mapping={"accepted": 10, "sent": 6, "failed": 1, "stopped": 1, "delivered": 5},
    )
    client.hset(p.stats_topic("may"), mapping={"accepted": 3, "sent": 3})
    client.hset(p.stats_global, mapping={"accepted": 13, "sent": 9, "failed": 1, "stopped": 1})
    client.zadd(p.stats_topics, {"may": NOW_MS - 86_400_000, "june": NOW_MS})
    client.xadd(p.sends_dead, {"m": "1-0", "i": "0", "e": "a@example.com", "reason": "x"})
    # Waiting for the pump: 1 transactional job, 2 of june's bulk ones.
    client.rpush(p.transactional, "2-0\t0\tt@example.com")
    client.rpush(p.backlog("june"), "3-0\t0\ta@example.com", "3-0\t1\tb@example.com")
    client.zadd(p.backlog_topics, {"june": 0})
    client.close()


def test_one_topic_as_a_table_and_as_json(sesflow: Sesflow, redis_url: str) -> None:
    store_counters(redis_url)
    res = sesflow("stats", "june")
    assert res.code == 0, res.err
    assert "topic june" in res.out
    assert "total (accepted)" in res.out and "10" in res.out
    assert "pending" in res.out and "60.0%" in res.out  # sent 6 of 10
    assert "progress 80.0%" in res.out

    res = sesflow("stats", "june", "--json")
    row = json.loads(res.out)
    assert row["total"] == 10 and row["created"] == 2 and row["sent"] == 6
    assert row["done"] is False
    assert row["backlog"] == 2 and row["lane"] == "bulk"  # june's jobs waiting for the pump


def test_all_topics_recent_first_with_totals(sesflow: Sesflow, redis_url: str) -> None:
    store_counters(redis_url)
    res = sesflow("stats", "--all")
    assert res.code == 0, res.err
    assert res.out.index("june") < res.out.index("may")
    assert "all topics" in res.out and "dead letters requests 0, sends 1, events 0" in res.out
    assert "waiting by lane: transactional 1  ·  bulk 2  ·  paused 0" in res.out
    data = json.loads(sesflow("stats", "--table", "--json").out)
    assert [t["topic_id"] for t in data["topics"]] == ["june", "may"]
    assert [(t["backlog"], t["lane"]) for t in data["topics"]] == [(2, "bulk"), (0, None)]
    assert data["totals"]["sent"] == 9
    assert data["dead_letters"] == {"requests": 0, "sends": 1, "events": 0}
    assert data["queue"]["queued"] == 3
    assert data["queue"]["lanes"] == [
        {"lane": "transactional", "queued": 1},
        {"lane": "bulk", "queued": 2},
        {"lane": "paused", "queued": 0},
    ]


def test_unknown_topic_and_bad_combinations(sesflow: Sesflow) -> None:
    res = sesflow("stats", "nope")
    assert res.code == 1 and "no statistics for topic 'nope'" in res.err
    assert sesflow("stats", "t", "--all").code == 2
    assert sesflow("stats", "--json").code == 2


def test_bare_stats_still_runs_the_role_with_a_notice(
    sesflow: Sesflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    def serve(role: str) -> int:
        ran.append(role)
        return 0

    monkeypatch.setattr(cli_main, "serve", serve)
    res = sesflow("stats")
    assert res.code == 0 and ran == ["stats"]
    assert "deprecated" in res.err and "sesflow serve stats" in res.err
    assert sesflow("serve", "stats").code == 0 and ran == ["stats", "stats"]


def test_without_redis_url_the_url_of_sesflow_up_is_used(
    sesflow: Sesflow, redis_url: str, monkeypatch: pytest.MonkeyPatch, cli_env: object
) -> None:
    store_counters(redis_url)
    monkeypatch.delenv("REDIS_URL")
    res = sesflow("stats", "june")
    assert res.code == 2 and "REDIS_URL is not set" in res.err
    up_env = up_env_file(load_settings())
    up_env.parent.mkdir(parents=True, exist_ok=True)
    up_env.write_text(f"REDIS_URL={redis_url}\n")
    assert sesflow("stats", "june").code == 0


def test_unreachable_redis_is_a_clear_error(
    sesflow: Sesflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sesflow.cli.embedded import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    res = sesflow("stats", "june")
    assert res.code == 3 and "cannot reach Redis" in res.err

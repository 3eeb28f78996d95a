from __future__ import annotations

import json
from typing import Any

import pytest
import redis as syncredis

from sesflow.cli.local_ses import LOCAL_CREDENTIALS

from support.clikit import REGION, SENDER, Sesflow


@pytest.fixture
def ses_env(monkeypatch: pytest.MonkeyPatch, moto_ses: Any, cli_env: object) -> Any:
    monkeypatch.setenv("SES_ENDPOINT_URL", moto_ses.url)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("EMAIL_SENDER", f"News <{SENDER}>")
    for name, value in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_ses


def findings(res: Any) -> dict[str, tuple[str, str]]:
    return {f["check"]: (f["status"], f["detail"]) for f in json.loads(res.out)}


def test_everything_ready(sesflow: Sesflow, ses_env: Any) -> None:
    res = sesflow("check")
    assert res.code == 0, res.out + res.err
    assert "ready to send" in res.out
    got = findings(sesflow("check", "--json"))
    assert got["redis"][0] == "ok" and got["redis version"][0] == "ok"
    assert got["redis eviction"] == ("ok", "maxmemory-policy noeviction")
    assert got["redis AOF"][0] == "warn"  # the test server runs without AOF
    assert got["credentials"][0] == "ok"
    assert got["identity"] == ("ok", f"{SENDER}: {SENDER} and sesflow.test verified")
    assert got["configuration set"][0] == "ok"
    assert got["quota"][0] == "ok" and "MaxSendRate 1000/s" in got["quota"][1]
    assert got["rate"][0] == "ok"
    # the local SES of `sesflow up` delivers nothing: no domain, account or feedback checks
    for name in ("DKIM", "MAIL FROM", "DMARC", "account", "feedback"):
        assert got[name][0] == "skip" and "local run" in got[name][1]
    assert got["SERVER_URL"][0] == "ok"
    # --strict turns the AOF warning into a failure
    assert sesflow("check", "--skip-ses").code == 0
    assert sesflow("check", "--skip-ses", "--strict").code == 1


def test_problems_fail_with_a_hint(
    sesflow: Sesflow, ses_env: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_SENDER", "someone@unverified.example")
    monkeypatch.setenv("EMAIL_RATE", "5000")
    monkeypatch.setenv("SES_CONFIGURATION_SET", "tpyo")
    client = syncredis.Redis.from_url(redis_url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        res = sesflow("check")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert res.code == 1
    assert "neither someone@unverified.example nor unverified.example is verified" in res.out
    assert "create-email-identity" in res.out
    assert "maxmemory-policy is allkeys-lru" in res.out
    assert "EMAIL_RATE 5000/s is above SES's MaxSendRate 1000/s" in res.out
    assert "SES_CONFIGURATION_SET 'tpyo' does not exist" in res.out
    assert "2 check(s) failed" in res.out


def test_no_credentials_and_no_redis(sesflow: Sesflow, monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.utils

    def no_probe(*_: Any, **__: Any) -> Any:
        raise AssertionError("instance metadata must not be asked")

    monkeypatch.setattr(
        botocore.utils.InstanceMetadataFetcher, "retrieve_iam_role_credentials", no_probe
    )
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.delenv("REDIS_URL")
    res = sesflow("check")
    assert res.code == 1
    got = findings(sesflow("check", "--json"))
    assert got["credentials"] == ("fail", "no AWS credentials found")
    assert got["identity"][0] == "skip" and got["quota"][0] == "skip"
    assert got["redis"][0] == "fail" and "REDIS_URL is not set" in got["redis"][1]
    assert "--allow-imds" in res.out


def test_unreachable_redis_and_skips(sesflow: Sesflow, monkeypatch: pytest.MonkeyPatch) -> None:
    from sesflow.cli.embedded import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    got = findings(sesflow("check", "--skip-ses", "--json"))
    assert got["redis"][0] == "fail" and "secret" not in got["redis"][1]
    assert got["SES"] == ("skip", "--skip-ses")
    res = sesflow("check", "--skip-redis", "--skip-ses")
    assert res.code == 0

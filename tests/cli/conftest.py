"""Fixtures for the operator commands: a clean environment pointing at the test Redis, and a
way to run `sesflow ...` in-process and capture what it prints and its exit status."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sesflow.cli.main import main

from support.clikit import REGION, SENDER, Result, Sesflow


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Path:
    """The environment a command sees: the test Redis, no credentials, no `.env`, wide output."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SES_", "API_KEY", "JWT_", "REDIS_", "SESFLOW_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SESFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRACKING_SECRET", "cli-tracking-secret")
    monkeypatch.setenv("COLUMNS", "200")
    # Never let botocore look for instance metadata from a test.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return tmp_path


@pytest.fixture
def sesflow(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> Sesflow:
    """`sesflow(*args)` runs the command in this process and returns (code, stdout, stderr)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def moto_ses() -> Iterator[object]:
    """moto's SES on loopback (in this process), with SENDER verified."""
    from sesflow.cli.local_ses import LocalSes

    ses = LocalSes(region=REGION)
    ses.start([SENDER])
    yield ses
    ses.stop()

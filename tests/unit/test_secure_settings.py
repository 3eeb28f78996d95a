"""Secure by default: placeholder and short secrets are refused, ingest and stats refuse to serve
a public address without credentials, and secrets never show in a repr or in `sesflow up`."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sesflow.cli.embedded import RedisProcess, free_port
from sesflow.common.errors import ConfigError
from sesflow.common.settings import check_role, read_dotenv, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]
STRONG = "kq3v9Zr1xW8pL2mN7bT4"  # 20 random-looking bytes
SECRET_SETTINGS = ("TRACKING_SECRET", "API_KEY", "JWT_SECRET")
PLACEHOLDERS = (
    "CHANGE_ME",
    "changeme",
    "change-me",
    "secret",
    "SECRET",
    "your_secret_key",
    "your-api-key",
    "password",
    "CHANGE_ME_TO_SOMETHING_LONG_AND_RANDOM",
)


@pytest.mark.parametrize("name", SECRET_SETTINGS)
@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholder_secrets_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is the placeholder"):
        settings_from_mapping({name: value})


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_short_secrets_are_refused_without_showing_them(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is 15 bytes long; it must be at least 16") as e:
        settings_from_mapping({name: "Zq8rT2vX9mL4pW1"})
    assert "Zq8rT2vX9mL4pW1" not in str(e.value)
    with pytest.raises(ConfigError, match="single character"):
        settings_from_mapping({name: "a" * 32})


def test_strong_and_unset_secrets_are_accepted() -> None:
    settings = settings_from_mapping({name: STRONG for name in SECRET_SETTINGS})
    assert settings.tracking_secret == settings.api_key == settings.jwt_secret == STRONG
    assert settings_from_mapping({}).tracking_secret == ""  # generated and kept in Redis


def test_the_rust_services_example_jwt_secret_says_what_to_do(tmp_path: Path) -> None:
    # The Rust service's README: `JWT_SECRET=your_secret_key  # Optional`.
    env = tmp_path / ".env"
    env.write_text("JWT_SECRET=your_secret_key  # Optional\n")
    with pytest.raises(ConfigError) as e:
        settings_from_mapping(read_dotenv(env))
    message = str(e.value)
    assert "the older services' example value" in message
    assert "at least 16 bytes" in message and "secrets.token_urlsafe" in message
    assert "leave JWT_SECRET empty" in message


def clean_env(**env: str) -> dict[str, str]:
    """The process environment without any sesflow setting, plus `env`."""
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT"}}
    return {**keep, "PYTHONPATH": str(ROOT), **env}


def run_sesflow(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sesflow.cli.main import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("role", ["ingest", "sender", "tracker", "stats"])
def test_a_role_with_a_placeholder_secret_exits_with_the_reason(role: str, tmp_path: Path) -> None:
    # The value deploy/k8s/secret.yaml ships: a forgotten one must stop the pod, loudly.
    proc = subprocess.run(
        [sys.executable, "-m", f"sesflow.{role}"],
        cwd=tmp_path,
        env=clean_env(TRACKING_SECRET="CHANGE_ME", REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"sesflow {role}: TRACKING_SECRET is the placeholder 'CHANGE_ME'" in proc.stderr


def test_sesflow_up_refuses_a_placeholder_secret(tmp_path: Path) -> None:
    proc = run_sesflow(["up"], tmp_path, API_KEY="changeme")
    assert proc.returncode == 2, proc.stderr
    assert "sesflow: API_KEY is the placeholder 'changeme'" in proc.stderr
    assert not (tmp_path / ".sesflow").exists()  # nothing was started


# --- ingest and stats on a public address ---------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "", "sesflow.example.com"])
@pytest.mark.parametrize("role", ["ingest", "stats"])
def test_the_api_refuses_a_public_address_without_credentials(host: str, role: str) -> None:
    settings = settings_from_mapping({"BIND_HOST": host} if host else {})
    if host:
        with pytest.raises(ConfigError, match=f"{role} would serve BIND_HOST={host} without"):
            check_role(settings, role)
    for opened in ({"API_KEY": STRONG}, {"JWT_SECRET": STRONG}, {"ALLOW_UNAUTHENTICATED": "1"}):
        check_role(settings_from_mapping({"BIND_HOST": host or "0.0.0.0", **opened}), role)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_the_api_may_stay_open_on_loopback(host: str) -> None:
    for role in ("ingest", "stats"):
        check_role(settings_from_mapping({"BIND_HOST": host}), role)


@pytest.mark.parametrize("role", ["tracker", "sender"])
def test_public_roles_need_no_credentials(role: str) -> None:
    # The tracker's links and webhook are public by nature; a sender serves only /metrics.
    check_role(settings_from_mapping({"BIND_HOST": "0.0.0.0"}), role)


@pytest.mark.parametrize("role", ["ingest", "stats"])
def test_an_api_role_on_a_public_address_exits_with_the_reason(role: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"sesflow.{role}"],
        cwd=tmp_path,
        env=clean_env(BIND_HOST="0.0.0.0", REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"sesflow {role}: {role} would serve BIND_HOST=0.0.0.0 without" in proc.stderr
    assert "ALLOW_UNAUTHENTICATED=1" in proc.stderr


def test_sesflow_up_refuses_a_public_address_without_credentials(tmp_path: Path) -> None:
    proc = run_sesflow(["up"], tmp_path, BIND_HOST="0.0.0.0")
    assert proc.returncode == 2, proc.stderr
    assert "would serve BIND_HOST=0.0.0.0 without authentication" in proc.stderr
    assert not (tmp_path / ".sesflow").exists()


# --- secrets are never shown ----------------------------------------------------------------


def test_settings_repr_redacts_secrets_and_url_passwords() -> None:
    secrets = {
        "API_KEY": "api-key-0123456789",
        "JWT_SECRET": "jwt-secret-0123456789",
        "TRACKING_SECRET": "tracking-secret-0123456789",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789",
        "AWS_SESSION_TOKEN": "aws-session-token-0123456789",
        "SENTRY_DSN": "https://sentrykey0123456789@o1.ingest.sentry.io/1",
    }
    settings = settings_from_mapping(
        {
            **secrets,
            "REDIS_URL": "rediss://default:redis-password-0123@redis.internal:6380/0",
            "DATABASE_URL": "postgres://app:db-password-0123@db/app",
        }
    )
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        for value in [*secrets.values(), "redis-password-0123", "db-password-0123"]:
            assert value not in text
        assert "rediss://default:***@redis.internal:6380/0" in text
        assert "api_key='***'" in text and "jwt_secret='***'" in text
        assert "email_rate=14.0" in text  # everything else stays readable
    assert settings.api_key == secrets["API_KEY"]  # the value itself is untouched
    assert "api_key=''" in repr(settings_from_mapping({}))  # unset stays visibly unset


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """stdout of `proc` up to the line holding `marker`; raises if it does not come in time."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(lines.get(timeout=left))
        except queue.Empty:
            break
        if marker in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout}s; got:\n{''.join(seen)}")


def test_sesflow_up_does_not_print_the_redis_password(tmp_path: Path) -> None:
    password = "redis-pass-0123456789"
    redis = RedisProcess(tmp_path / "redis", aof=False, extra=("--requirepass", password)).start()
    ports = {name: str(free_port()) for name in ("INGEST", "TRACKER", "STATS", "SENDER_METRICS")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sesflow.cli.main import main; main(['up'])"],
        cwd=tmp_path,
        env=clean_env(
            REDIS_URL=f"redis://:{password}@127.0.0.1:{redis.port}/0",
            SES_ENDPOINT_URL="http://127.0.0.1:9/",  # nothing is sent in this test
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            PYTHONUNBUFFERED="1",
            **{f"{name}_PORT": port for name, port in ports.items()},
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = read_until(proc, "Ctrl-C stops everything", timeout=60)
        assert f"redis://:***@127.0.0.1:{redis.port}/0" in out
        assert password not in out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        redis.stop()


def test_the_older_services_example_values_are_refused_with_a_message(tmp_path: Path) -> None:
    # Both older services' READMEs: AWS keys and SENTRY_DSN as templates that would fail every
    # send or crash Sentry's start with a traceback.
    for line, message in [
        ("AWS_ACCESS_KEY_ID=your_access_key", "AWS_ACCESS_KEY_ID is the placeholder"),
        ("AWS_SECRET_ACCESS_KEY=your_secret_key", "AWS_SECRET_ACCESS_KEY is the placeholder"),
        ("SENTRY_DSN=your_sentry_dsn  # Optional", "SENTRY_DSN is not a Sentry DSN"),
    ]:
        env = tmp_path / ".env"
        env.write_text(line + "\n")
        with pytest.raises(ConfigError, match=message):
            settings_from_mapping(read_dotenv(env))
    ok = settings_from_mapping(
        {
            "AWS_ACCESS_KEY_ID": "testing",  # moto's and the test doubles' keys
            "AWS_SECRET_ACCESS_KEY": "testing",
            "SENTRY_DSN": "https://abc123@o1.ingest.sentry.io/42",
        }
    )
    assert ok.aws_access_key_id == "testing"


def test_a_role_with_the_older_services_sentry_dsn_exits_with_the_reason(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sesflow.sender"],
        cwd=tmp_path,
        env=clean_env(SENTRY_DSN="your_sentry_dsn", REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "sesflow sender: SENTRY_DSN is not a Sentry DSN" in proc.stderr
    assert "Traceback" not in proc.stderr

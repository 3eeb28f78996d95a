"""`sesflow up`: the whole system on this machine, every role as its own supervised process."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from sesflow.cli.embedded import RedisProcess, port_open
from sesflow.cli.local_env import up_env_file
from sesflow.cli.supervisor import Child, Supervisor, child_env, stop_on_signals
from sesflow.common.logs import configure
from sesflow.common.settings import (
    ANY_TOPIC,
    AUTHENTICATED_ROLES,
    Settings,
    check_role,
    load_settings,
    redact_url,
)


def feedback_line(settings: Settings, local_ses: bool) -> str:
    """What `sesflow up` says about SNS feedback: the tracker refuses it unless told whose."""
    topics = settings.sns_topic_arns
    if topics == (ANY_TOPIC,):
        return "any SNS topic (SNS_TOPIC_ARNS=*): anyone can report bounces; set your topics"
    if topics:
        return "SNS topics " + ", ".join(topics)
    if local_ses:
        return "no SNS with the local SES endpoint (set SNS_TOPIC_ARNS with a real one)"
    return "SNS refused (403) until SNS_TOPIC_ARNS names your SES feedback topics"


def aws_configured(settings: Settings) -> bool:
    """Whether an SES endpoint or AWS credentials are configured locally. The instance-metadata
    and container providers are left out: on a laptop they would only probe the network."""
    if settings.ses_endpoint_url or settings.aws_access_key_id:
        return True
    import botocore.session

    resolver = botocore.session.get_session().get_component("credential_provider")
    for provider in ("iam-role", "container-role"):
        resolver.remove(provider)
    return resolver.load_credentials() is not None


def wait_for_ports(ports: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(port_open("127.0.0.1", port) for port in ports):
            return True
        time.sleep(0.1)
    return False


def pidfile(data: Path) -> Path:
    return data.resolve() / "redis.pid"


def stop_leftover_redis(data: Path) -> None:
    """A Redis left running by an `up` that was killed outright still owns the AOF files: stop
    it (it writes its AOF) before a new one opens them."""
    path = pidfile(data)
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"redis-server" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def cmd_up(args: argparse.Namespace) -> int:
    """Start Redis (embedded unless REDIS_URL), a local SES (unless AWS is configured) and every
    role as its own process; Ctrl-C or SIGTERM stops everything."""
    # Imported here: moto (the local SES) is in the `local` extra, needed only by `up`.
    from sesflow.cli.local_ses import LOCAL_CREDENTIALS, LocalSes

    settings = load_settings()
    for role in AUTHENTICATED_ROLES:
        check_role(settings, role)
    configure(settings, "up")
    env = dict(os.environ)
    redis: RedisProcess | None = None
    ses: LocalSes | None = None
    up_env = up_env_file(settings)
    local: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    try:
        if not settings.redis_url:
            data = Path(settings.data_dir) / "redis"
            stop_leftover_redis(data)
            redis = RedisProcess(
                data, port=args.redis_port, aof=True, extra=("--pidfile", str(pidfile(data)))
            ).start()
            local["REDIS_URL"] = redis.url
            lines.append(("redis", f"{redis.url}  (embedded, AOF data in {data})"))
        else:
            lines.append(("redis", redact_url(settings.redis_url)))
        if not aws_configured(settings):
            ses = LocalSes(port=args.ses_port, region=settings.aws_region)
            local["SES_ENDPOINT_URL"] = ses.start([settings.email_sender])
            local.update(LOCAL_CREDENTIALS)
            env.setdefault("AWS_REGION", settings.aws_region)
            lines.append(("SES", f"{ses.url}  (local endpoint; nothing leaves this machine)"))
        else:
            lines.append(("SES", settings.ses_endpoint_url or f"AWS {settings.aws_region}"))

        env.update(local)
        up_env.parent.mkdir(parents=True, exist_ok=True)
        up_env.write_text("".join(f"{k}={v}\n" for k, v in local.items()))
        children = [
            Child(role, f"sesflow.{role}", child_env(env))
            for role in ("ingest", "tracker", "stats")
        ] + [
            Child(
                f"sender-{n}",
                "sesflow.sender",
                child_env(env, SENDER_METRICS_PORT=str(settings.sender_metrics_port + n)),
            )
            for n in range(args.senders)
        ]
        supervisor = Supervisor(children, grace=settings.shutdown_grace)
        stop_on_signals(supervisor)
        supervisor.start()
        ports = [settings.ingest_port, settings.tracker_port, settings.stats_port]
        if not wait_for_ports(ports):
            print("sesflow: the roles did not start listening; see the logs above", file=sys.stderr)
        host = "localhost" if settings.bind_host in {"127.0.0.1", "0.0.0.0"} else settings.bind_host
        lines = [
            ("ingest", f"http://{host}:{settings.ingest_port}/v1/messages"),
            ("tracker", f"http://{host}:{settings.tracker_port}/v1/events/results"),
            ("stats", f"http://{host}:{settings.stats_port}/  (live dashboard)"),
            (
                "senders",
                f"{args.senders} replica(s), EMAIL_RATE={settings.email_rate:g}/s, /metrics on "
                + ", ".join(str(settings.sender_metrics_port + n) for n in range(args.senders)),
            ),
            *lines,
            ("feedback", feedback_line(settings, local_ses=ses is not None)),
        ]
        print("\nsesflow is up", flush=True)
        for name, text in lines:
            print(f"  {name:<8} {text}", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        supervisor.watch()
        print("sesflow: stopping…", flush=True)
        supervisor.stop()
        return 0
    finally:
        if ses is not None:
            ses.stop()
        if redis is not None:
            redis.stop()
        up_env.unlink(missing_ok=True)

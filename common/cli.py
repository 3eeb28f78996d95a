"""The `sesflow` command: run the whole system (`up`), one role, or an operator's task."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from common.embedded import RedisProcess, port_open
from common.errors import ConfigError
from common.settings import (
    ANY_TOPIC,
    AUTHENTICATED_ROLES,
    Settings,
    check_role,
    load_settings,
    read_dotenv,
    redact_url,
)

ROLES = ("ingest", "sender", "tracker", "stats")


def up_env_file(settings: Settings) -> Path:
    """Where a running `sesflow up` writes the embedded services it started (KEY=VALUE lines)."""
    return Path(settings.data_dir) / "up.env"


def with_local_redis(settings: Settings) -> Settings:
    """Settings for an operator command run beside a `sesflow up` (same directory): its embedded
    Redis when REDIS_URL is unset, and its local SES endpoint when no SES endpoint or AWS keys
    are configured. Unchanged when no `up` runs here."""
    local = read_dotenv(up_env_file(settings))
    changes: dict[str, str] = {}
    if not settings.redis_url and local.get("REDIS_URL"):
        changes["redis_url"] = local["REDIS_URL"]
    if not (settings.ses_endpoint_url or settings.aws_access_key_id) and local.get(
        "SES_ENDPOINT_URL"
    ):
        changes["ses_endpoint_url"] = local["SES_ENDPOINT_URL"]
        changes["aws_access_key_id"] = local.get("AWS_ACCESS_KEY_ID", "")
        changes["aws_secret_access_key"] = local.get("AWS_SECRET_ACCESS_KEY", "")
    return msgspec.structs.replace(settings, **changes) if changes else settings


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


def run_role(role: str) -> int:
    module = importlib.import_module(f"{role}.__main__")
    module.main()
    return 0


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
    from common.local_ses import LOCAL_CREDENTIALS, LocalSes
    from common.logs import configure
    from common.supervisor import Child, Supervisor, child_env, stop_on_signals

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
            Child(role, role, child_env(env)) for role in ("ingest", "tracker", "stats")
        ] + [
            Child(
                f"sender-{n}",
                "sender",
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


def build_parser() -> argparse.ArgumentParser:
    # Imported here: these modules import this one (for `with_local_redis`).
    from common import cli_cancel, cli_check, cli_dlq, cli_send, cli_stats

    parser = argparse.ArgumentParser(
        prog="sesflow",
        description="Send email through Amazon SES at scale over Redis Streams.",
        epilog="examples:\n  sesflow up\n  sesflow check\n  sesflow send list.csv --topic t "
        "--subject Hello --html body.html\n  sesflow stats --all\n  sesflow dlq list\n\n"
        "`sesflow COMMAND --help` explains each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start the whole system (embedded Redis and local SES when not configured)",
        description=cmd_up.__doc__,
    )
    up.add_argument("--senders", type=int, default=1, help="sender replicas (default 1)")
    up.add_argument(
        "--redis-port", type=int, default=0, help="embedded Redis port (default: a free one)"
    )
    up.add_argument("--ses-port", type=int, default=0, help="local SES port (default: a free one)")
    up.set_defaults(func=cmd_up)

    for role in ROLES:
        p = sub.add_parser(
            role,
            help=f"run the {role} role against REDIS_URL",
            description=f"Run the {role} role in the foreground against REDIS_URL.",
        )
        p.set_defaults(func=lambda _args, role=role: run_role(role))
        if role == "stats":
            # `sesflow stats` alone runs the role; `sesflow stats TOPIC|--all` prints a report.
            cli_stats.add_report(p)
    for command in (cli_send, cli_cancel, cli_check, cli_dlq):
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"sesflow: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code or 0)

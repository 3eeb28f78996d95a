"""The `sesflow` command: run the whole system (`up`), one role (`serve`), or an operator's task."""

from __future__ import annotations

import argparse
import importlib
import sys

from sesflow.cli import (
    archive,
    cancel,
    check,
    dlq,
    lookups,
    pause,
    send,
    stats_report,
    suppressions,
)
from sesflow.cli.up import cmd_up
from sesflow.common.errors import ConfigError

ROLES = ("ingest", "sender", "tracker", "stats")


def serve(role: str) -> int:
    """Run one role in the foreground, as `python -m sesflow.<role>` does."""
    module = importlib.import_module(f"sesflow.{role}.__main__")
    module.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sesflow",
        description="Send email through Amazon SES at scale over Redis Streams.",
        epilog="examples:\n  sesflow up\n  sesflow check\n  sesflow send list.csv --topic t "
        "--subject Hello --html body.html\n  sesflow stats --all\n  sesflow dlq list\n"
        "  sesflow serve sender\n\n`sesflow COMMAND --help` explains each command.",
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

    serve_parser = sub.add_parser(
        "serve",
        help="run one role (ingest, sender, tracker or stats) in the foreground",
        description="Run one role in the foreground against REDIS_URL (for production: one "
        "process per role, any number of senders).",
    )
    serve_parser.add_argument("role", choices=ROLES, metavar="ROLE", help=", ".join(ROLES))
    serve_parser.set_defaults(func=lambda args: serve(args.role))

    # The older spelling `sesflow ROLE` keeps working for ingest, sender and tracker.
    for role in ("ingest", "sender", "tracker"):
        alias = sub.add_parser(role, help=f"the same as `sesflow serve {role}`")
        alias.set_defaults(func=lambda _args, role=role: serve(role))
    stats_report.register(sub, serve_stats=serve_stats_deprecated)
    for command in (send, cancel, pause, check, dlq, suppressions, archive, lookups):
        command.register(sub)
    return parser


def serve_stats_deprecated() -> int:
    print(
        "sesflow: bare `sesflow stats` is deprecated as the way to run the stats role; use "
        "`sesflow serve stats` (`sesflow stats TOPIC` and `--all` print a report)",
        file=sys.stderr,
        flush=True,
    )
    return serve("stats")


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

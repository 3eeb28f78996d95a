"""`sesflow cancel TOPIC`: the same as `DELETE /v1/topics/{topic}` on the ingest API (it is that
call), then what the topic looks like now."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from sesflow.cli.api_call import INGEST, Refused, call_ingest
from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    console,
    open_redis,
    operator_settings,
    print_json,
    run,
    when,
)
from sesflow.cli.stats_report import read_topic
from sesflow.common.connection import UNAVAILABLE
from sesflow.common.keys import Keys
from sesflow.common.settings import Settings

DESCRIPTION = """\
Cancel a topic: every recipient of TOPIC not sent yet is stopped, whether scheduled, queued or
not dispatched yet; mail already sent is untouched. Only messages accepted before the cancel are
affected, so the topic name can be reused afterwards.

This calls the ingest API (DELETE /v1/topics/{topic}, with API_KEY or a JWT_SECRET token when
set). Scheduled recipients are stopped at once (the number printed); queued ones are stopped by
the senders as they reach them, so `stopped` in `sesflow stats TOPIC` keeps growing for a
moment. Cancelling twice is harmless."""

EPILOG = """\
examples:
  sesflow cancel june-news
  sesflow cancel june-news --ingest-url http://ingest.internal:3000 --json

exit status: 0 when cancelled; 1 when ingest refused; 3 when it cannot be reached."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cancel",
        help="stop every recipient of a topic that was not sent yet",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("topic", metavar="TOPIC", help="the topic to cancel")
    INGEST.add_url_option(p)
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.set_defaults(func=cmd_cancel)


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = operator_settings()
    base = INGEST.base(settings, args.ingest_url)
    path = f"/v1/topics/{quote(args.topic, safe='')}"

    async def main() -> int:
        try:
            answer = await call_ingest(settings, base, "DELETE", path, f"cancel {args.topic!r}")
        except Refused:
            return EXIT_FAILED
        if args.json:
            print_json(answer)
            return EXIT_OK
        out = console()
        out.print(
            f"cancelled topic {answer['topic_id']!r} at {when(int(answer['stopped_at']))}: "
            f"{int(answer['stopped']):,} scheduled recipient(s) stopped now; queued ones are "
            "stopped as the senders reach them"
        )
        row = await current(settings, args.topic)
        if row is not None:
            out.print(
                f"topic now: total {row['total']:,} · sent {row['sent']:,} · stopped "
                f"{row['stopped']:,} · pending {row['created']:,} (pending ones will end stopped)"
            )
        return EXIT_OK

    return run(main)


async def current(settings: Settings, topic: str) -> dict[str, Any] | None:
    """The topic's counters when Redis is reachable from here (a nicety: None otherwise)."""
    if not settings.redis_url:
        return None
    client = open_redis(settings)
    try:
        return await read_topic(
            client, Keys(settings.redis_prefix, settings.send_partitions), topic
        )
    except UNAVAILABLE:
        return None
    finally:
        await client.aclose()

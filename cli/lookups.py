"""`sesflow messages ID` and `sesflow recipient EMAIL`: what happened to one message and to one
address, as the archive recorded it (through the stats API's look-up routes)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

import aiohttp
from rich import box
from rich.table import Table

from sesflow.cli.api_call import STATS, Refused, call_api, session
from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    console,
    operator_settings,
    parse_duration,
    print_json,
    run,
    when,
)
from sesflow.common.settings import Settings

PAGE = 500  # the API's largest page

MESSAGES_DESCRIPTION = """\
Print a message (the id POST /v1/messages answered): its topic, subject, lane, when it was
accepted and scheduled, its recipients counted by state, then its recipients one per line with
their state, last event and SES message id.

Read from the history archive through the stats API (GET /v1/messages/{id} and
/v1/messages/{id}/recipients, with API_KEY or a JWT_SECRET token when set)."""

MESSAGES_EPILOG = """\
examples:
  sesflow messages 1718791234567-0
  sesflow messages 1718791234567-0 --state bounced --all
  sesflow messages 1718791234567-0 --json | jq '.recipients[].email'

exit status: 0 when found; 1 when the archive has no such message (or refused);
3 when the stats API cannot be reached."""

RECIPIENT_DESCRIPTION = """\
Print one address's timeline across every message sent to it, newest first: accepted, sent,
delivered, bounced (type and diagnostic), opened, clicked (URL), unsubscribed...

Read from the history archive through the stats API (GET /v1/recipients/{email}/events)."""

RECIPIENT_EPILOG = """\
examples:
  sesflow recipient ada@example.com
  sesflow recipient ada@example.com --since 7d
  sesflow recipient ada@example.com --since 2024-06-01 --all --json

exit status: 0 when found; 1 when the archive has no event for the address (or refused);
3 when the stats API cannot be reached."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "messages",
        help="a message's state and its recipients, from the archive",
        description=MESSAGES_DESCRIPTION,
        epilog=MESSAGES_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("msg_id", metavar="ID", help="the message id POST /v1/messages answered")
    p.add_argument("--state", help="only the recipients in this state (sent, bounced, ...)")
    add_paging(p, "recipients")
    p.set_defaults(func=cmd_messages)

    r = sub.add_parser(
        "recipient",
        help="one address's timeline across messages, from the archive",
        description=RECIPIENT_DESCRIPTION,
        epilog=RECIPIENT_EPILOG,
        formatter_class=Formatter,
    )
    r.add_argument("email", metavar="EMAIL", help="the address")
    r.add_argument(
        "--since",
        metavar="WHEN",
        help="only events since then: a duration back from now (90m, 7d) or a date (2024-06-01)",
    )
    add_paging(r, "events")
    r.set_defaults(func=cmd_recipient)


def add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help=f"{what} to print (default 50)"
    )
    parser.add_argument("--all", action="store_true", help=f"every one of the {what}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    STATS.add_url_option(parser)


async def collect(
    http: aiohttp.ClientSession,
    settings: Settings,
    base: str,
    path: str,
    params: dict[str, str],
    limit: int | None,
) -> tuple[list[dict[str, Any]], bool]:
    """Items of a paginated route, up to `limit` (None: all); and whether more are left."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        want = PAGE if limit is None else min(PAGE, limit - len(items))
        query = {**params, "limit": str(want), **({"cursor": cursor} if cursor else {})}
        answer = await call_api(http, settings, STATS, base, "GET", path, params=query)
        items.extend(answer["items"])
        cursor = answer["next_cursor"] or ""
        if not cursor or (limit is not None and len(items) >= limit):
            return items, bool(cursor)


def since_param(text: str) -> str:
    """A duration back from now in epoch ms, else the text as is (the API reads dates)."""
    import time

    try:
        return str(int((time.time() - parse_duration(text)) * 1000))
    except ValueError:
        return text


def cmd_messages(args: argparse.Namespace) -> int:
    settings = operator_settings()
    base = STATS.base(settings, args.stats_url)
    path = f"/v1/messages/{quote(args.msg_id, safe='')}"

    async def main() -> int:
        async with session() as http:
            try:
                message = await call_api(http, settings, STATS, base, "GET", path)
                params = {"state": args.state} if args.state else {}
                limit = None if args.all else max(1, args.limit)
                items, more = await collect(
                    http, settings, base, f"{path}/recipients", params, limit
                )
            except Refused:
                return EXIT_FAILED
        if args.json:
            print_json({**message, "recipients": items, "more": more})
            return EXIT_OK
        render_message(message, items, more, args.state)
        return EXIT_OK

    return run(main)


def render_message(
    message: dict[str, Any], items: list[dict[str, Any]], more: bool, state: str | None
) -> None:
    out = console()
    scheduled = when(int(message["scheduled_at"] or 0))
    out.print(f"[bold]message {message['id']}[/]")
    out.print(f"  topic      {message['topic_id']}  ·  lane {message['lane'] or '-'}")
    out.print(f"  subject    {message['subject'] or '-'}")
    out.print(f"  accepted   {when(int(message['accepted_at'] or 0))}  ·  scheduled {scheduled}")
    counts = message["counts"]
    by_state = "  ·  ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda x: -x[1]))
    out.print(f"  recipients {int(message['total']):,}: {by_state or 'none archived yet'}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for label in ("#", "email", "state", "last event", "at", "SES message id"):
        table.add_column(label, justify="right" if label == "#" else "left", no_wrap=True)
    for r in items:
        table.add_row(
            str(r["index"]),
            r["email"],
            r["state"],
            r["last_event"] or "-",
            when(int(r["last_event_at"] or 0)),
            r["ses_id"] or "-",
        )
    if not items:
        table.add_row("", f"(no recipient{' in state ' + state if state else ''})", *[""] * 4)
    out.print(table)
    if more:
        out.print(f"showing the first {len(items):,}: --all for every one, --json for JSON")


def cmd_recipient(args: argparse.Namespace) -> int:
    settings = operator_settings()
    base = STATS.base(settings, args.stats_url)
    path = f"/v1/recipients/{quote(args.email, safe='@')}/events"

    async def main() -> int:
        params = {"since": since_param(args.since)} if args.since else {}
        limit = None if args.all else max(1, args.limit)
        async with session() as http:
            try:
                items, more = await collect(http, settings, base, path, params, limit)
            except Refused:
                return EXIT_FAILED
        if args.json:
            print_json({"email": args.email, "events": items, "more": more})
            return EXIT_OK
        render_timeline(args.email, items, more)
        return EXIT_OK

    return run(main)


def event_detail(event: dict[str, Any]) -> str:
    """What this kind of event says beyond its name: a bounce's type, a click's URL..."""
    parts = []
    if event.get("bounce_type"):
        parts.append("/".join(x for x in (event["bounce_type"], event.get("bounce_subtype")) if x))
    for name in ("url", "detail"):
        if event.get(name):
            parts.append(str(event[name]))
    return ": ".join(parts)


def render_timeline(email: str, items: list[dict[str, Any]], more: bool) -> None:
    out = console()
    table = Table(
        title=f"{email}: events, newest first",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for label in ("at", "event", "topic", "message #index", "detail"):
        table.add_column(label, no_wrap=label != "detail", overflow="fold")
    for e in items:
        index = e["index"]
        table.add_row(
            when(int(e["at"])),
            e["type"],
            e["topic_id"] or "-",
            f"{e['message_id']} #{index}" if index is not None and index >= 0 else e["message_id"],
            event_detail(e),
        )
    if not items:
        table.add_row("", "(no events in that span)", "", "", "")
    out.print(table)
    if more:
        out.print(f"showing the latest {len(items):,}: --all for every one, --since to narrow")

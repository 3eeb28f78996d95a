"""`sesflow stats TOPIC` and `sesflow stats --all`: the counters as tables, read straight from
Redis with the stats role's own queries. `sesflow stats` with no argument still runs the stats
role, with a deprecation notice (`sesflow serve stats` is the spelling)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    age,
    console,
    open_redis,
    operator_settings,
    print_json,
    run,
)
from sesflow.common.connection import Redis
from sesflow.common.keys import Keys
from sesflow.stats.overview import overview, topic_rows

DESCRIPTION = """\
With a TOPIC or --all: print statistics read straight from Redis (no stats API needed). Counts
come from the stats role's counters, so they are as fresh as its last batch (about a second).
When REDIS_URL is unset, the Redis of a running `sesflow up` is used.

With no argument it runs the stats role, as it always did, with a deprecation notice: the role is
`sesflow serve stats`."""

EPILOG = """\
columns:
  total       recipients accepted          pending     not finished yet (queued or scheduled)
  sent        accepted by SES              failed      will not be sent (see `sesflow dlq list`)
  stopped     cancelled before sending     suppressed  on the suppression list
  unknown     the sender died mid-call: maybe sent (ON_AMBIGUOUS=skip)
  delivered / bounced / complained / opened: SES feedback and unique opens

examples:
  sesflow stats                      run the stats role
  sesflow stats newsletter-2024-06   one topic
  sesflow stats --all                recent topics, global totals and the queue
  sesflow stats --all --limit 100 --json | jq '.topics[].topic_id'"""

# Rows of the one-topic table: (counter, label).
TOPIC_ROWS = (
    ("total", "total (accepted)"),
    ("created", "pending"),
    ("sent", "sent"),
    ("failed", "failed"),
    ("stopped", "stopped"),
    ("suppressed", "suppressed"),
    ("unknown", "unknown"),
    ("rejected", "rejected (invalid)"),
    ("delivered", "delivered"),
    ("bounced", "bounced"),
    ("bounced_hard", "  hard"),
    ("bounced_soft", "  soft"),
    ("complained", "complained"),
    ("opened_unique", "opened (unique)"),
    ("clicked_unique", "clicked (unique)"),
    ("unsubscribed", "unsubscribed"),
)
# Shares of `total` for pipeline states, of `sent` for feedback.
OF_SENT = {
    "delivered",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "opened_unique",
    "clicked_unique",
    "unsubscribed",
}
ALL_COLUMNS = (
    ("total", "total"),
    ("sent", "sent"),
    ("failed", "failed"),
    ("stopped", "stopped"),
    ("suppressed", "suppr."),
    ("unknown", "unknown"),
    ("created", "pending"),
    ("delivered", "deliv."),
    ("bounced", "bounced"),
    ("opened_unique", "opened"),
)
# The per-topic table leaves out the rarer states to fit a terminal; the totals have them all.
TOPIC_COLUMNS = tuple(c for c in ALL_COLUMNS if c[0] not in {"suppressed", "unknown"})
# On a narrow terminal (80 columns) the feedback counts go too, so the topic names stay whole.
NARROW_COLUMNS = tuple(
    c for c in TOPIC_COLUMNS if c[0] not in {"delivered", "bounced", "opened_unique"}
)
NARROW_WIDTH = 110


def register(sub: Any, serve_stats: Callable[[], int]) -> None:
    """`sesflow stats TOPIC|--all`: the report. Bare `sesflow stats` still runs the stats role
    through `serve_stats` (the older spelling, deprecated)."""
    parser = sub.add_parser(
        "stats",
        help="a topic's statistics, or every recent topic (`sesflow stats --all`)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("topic", nargs="?", metavar="TOPIC", help="print this topic's statistics")
    parser.add_argument(
        "--all",
        "--table",
        dest="all",
        action="store_true",
        help="print every recent topic (most recent first), global totals and the queue",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="with --all: how many recent topics to list (default 20, at most 200)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")

    def dispatch(args: argparse.Namespace) -> int:
        if args.topic is None and not args.all:
            if args.json or args.limit is not None:
                parser.error("--json and --limit need a TOPIC or --all")
            return serve_stats()
        if args.topic is not None and args.all:
            parser.error("give a TOPIC or --all, not both")
        return cmd_stats(args)

    parser.set_defaults(func=dispatch)


def cmd_stats(args: argparse.Namespace) -> int:
    settings = operator_settings()
    limit = max(1, min(args.limit or 20, 200))

    async def main() -> int:
        client = open_redis(settings)
        try:
            keys = Keys(settings.redis_prefix, settings.send_partitions)
            if args.all:
                data = await overview(client, keys, settings, {}, time.time(), limit)
                data["dead_letters"] = await dead_letter_counts(client, keys)
                if args.json:
                    print_json(data)
                else:
                    render_all(console(), data)
                return EXIT_OK
            row = await read_topic(client, keys, args.topic)
            if row is None:
                console(stderr=True).print(f"sesflow: no statistics for topic {args.topic!r}")
                return EXIT_FAILED
            if args.json:
                print_json(row)
            else:
                render_topic(console(), row)
            return EXIT_OK
        finally:
            await client.aclose()

    return run(main)


async def read_topic(client: Redis, keys: Keys, topic: str) -> dict[str, Any] | None:
    """The dashboard's row for one topic (counters, progress, rate, ETA); None when unknown."""
    (row,) = await topic_rows(client, keys, [(topic, 0)], time.time())
    row.pop("last_activity_ms", None)
    if not any(v for k, v in row.items() if isinstance(v, int) and not isinstance(v, bool)):
        return None
    return row


async def dead_letter_counts(client: Redis, keys: Keys) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.requests_dead)
    for p in keys.partitions:
        pipe.xlen(p.sends_dead)
        pipe.xlen(p.events_dead)
    replies = await pipe.execute()
    return {
        "requests": int(replies[0]),
        "sends": sum(int(v) for v in replies[1::2]),
        "events": sum(int(v) for v in replies[2::2]),
    }


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def topic_table(row: dict[str, Any], title: str = "") -> Table:
    total, sent = int(row.get("total", 0)), int(row.get("sent", 0))
    table = Table(title=title or f"topic {row.get('topic_id', '')}", title_justify="left")
    table.add_column("counter")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for name, label in TOPIC_ROWS:
        value = int(row.get(name, 0))
        table.add_row(label, f"{value:,}", share(value, sent if name in OF_SENT else total))
    return table


def render_topic(out: Console, row: dict[str, Any]) -> None:
    out.print(topic_table(row))
    state = "done" if row.get("done") else f"ETA {eta(row.get('eta_seconds'))}"
    progress = float(row.get("progress") or 0.0)
    out.print(
        f"progress {100 * progress:.1f}%  ·  {float(row.get('send_rate') or 0):.1f} sent/s "
        f"(last minute)  ·  {state}"
    )


def render_all(out: Console, data: dict[str, Any]) -> None:
    topics = Table(
        title="recent topics (most recent first)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    columns = NARROW_COLUMNS if out.width < NARROW_WIDTH else TOPIC_COLUMNS
    topics.add_column("topic", overflow="fold", min_width=12, max_width=40)
    for label in ("last", *(label for _, label in columns), "done", "ETA"):
        topics.add_column(label, justify="right", no_wrap=True)
    now_ms = int(time.time() * 1000)
    for row in data["topics"]:
        last = int(row.get("last_activity_ms") or 0)
        topics.add_row(
            str(row["topic_id"]),
            age(last, now_ms) if last else "-",
            *(f"{int(row[name]):,}" for name, _ in columns),
            f"{100 * float(row['progress']):.1f}%",
            "done" if row["done"] else eta(row.get("eta_seconds")),
        )
    if not data["topics"]:
        topics.add_row("(no topics yet)", *[""] * (len(columns) + 3))
    out.print(topics)

    totals = data["totals"]
    table = Table(title="all topics", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for _, label in ALL_COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_row(*(f"{int(totals[name]):,}" for name, _ in ALL_COLUMNS))
    out.print(table)

    queue, dead = data["queue"], data.get("dead_letters", {})
    out.print(
        f"send rate {data['send_rate']:.1f}/s (configured {data['configured_rate']:g}/s)  ·  "
        f"queued {queue['queued']:,} (in flight {queue['pending']:,})  ·  "
        f"scheduled chunks {queue['scheduled']:,}  ·  dead letters "
        + ", ".join(f"{k} {v:,}" for k, v in dead.items())
    )
    # The jobs waiting for the pump, by lane (`queued` counts them too, with those on `sends`).
    out.print(
        "waiting by lane: " + "  ·  ".join(f"{x['lane']} {x['queued']:,}" for x in queue["lanes"])
    )

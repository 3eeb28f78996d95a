"""`sesflow dlq list|show|replay|purge`: inspect and replay the dead-letter streams."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from sesflow.cli.dlq_entries import (
    STREAMS,
    DeadLetter,
    DeadStream,
    Outcome,
    Replayer,
    count_before,
    dead_streams,
    every,
    find,
    id_key,
    lengths,
    newest,
    purge,
)
from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    age,
    console,
    fail,
    open_redis,
    operator_settings,
    parse_duration,
    print_json,
    run,
    when,
)
from sesflow.common.connection import Redis, connect
from sesflow.common.errors import InputError
from sesflow.common.keys import Keys, is_decimal
from sesflow.common.settings import Settings
from sesflow.sender.state import recipient_state

DESCRIPTION = """\
Inspect and replay the dead-letter streams, where sesflow puts what it could not handle, with
the reason, instead of blocking or dropping it:

  requests  messages the dispatcher refused (undecodable, no valid address, ...); counted as
            `rejected`
  sends     recipient jobs that failed MAX_ATTEMPTS times or on repeated transient SES errors,
            and malformed jobs; counted as `failed`
  events    events stats could not count (undecodable, unknown type)
  webhooks  webhook deliveries that failed for WEBHOOK_RETRY_FOR, or whose endpoint was
            disabled (docs/webhooks.md)

Entries are read from REDIS_URL (or the Redis of a running `sesflow up`)."""

EPILOG = """\
examples:
  sesflow dlq list                          the 50 most recent dead letters of every stream
  sesflow dlq list --stream sends --limit 10
  sesflow dlq show 1718000000000-0
  sesflow dlq replay 1718000000000-0 1718000000001-0
  sesflow dlq replay --all --stream sends   retry every failed job after fixing the cause
  sesflow dlq purge --stream events --before 7d --yes"""

REPLAY_DESCRIPTION = """\
Put dead letters back where they came from, then delete them from the dead-letter stream:

  requests  the original `message` goes back on `requests` (a new message id); the dispatcher
            validates it again
  sends     the job goes back on its partition's `sends`; its final `f:<reason>` state is
            cleared and a `requeued` event moves the recipient from failed back to pending in
            the stats, so the sender sends it (once) and counts the new outcome
  events    the event goes back on its partition's `events`
  webhooks  the delivery goes back on its partition's webhook queue, due now, with the same
            `webhook-id` and a new WEBHOOK_RETRY_FOR (enable a disabled endpoint first)

Entries that would only be dead-lettered again are skipped with the reason: a request or event
that is still invalid, a sends entry that is not a job, a recipient already sent / stopped /
suppressed / unknown (never sent twice), or whose content or state has expired. --force replays
the invalid ones anyway (and requeues a job whose state has expired without correcting the
counts); a recipient in a final state other than failed is never requeued."""

REPLAY_EPILOG = """\
examples:
  sesflow dlq replay 1718000000000-0
  sesflow dlq replay --all --stream sends
  sesflow dlq replay --all --stream requests --force

exit status: 0 when every selected entry was replayed; 1 when some were skipped or not found."""

PURGE_DESCRIPTION = """\
Delete dead letters for good: all of them in the selected streams, or only those older than
--before. Without --yes nothing is deleted; the command says how many would be."""

PURGE_EPILOG = """\
examples:
  sesflow dlq purge --stream events --yes
  sesflow dlq purge --before 30d --yes          everything older than 30 days
  sesflow dlq purge --before 1718000000000-0    how many entries before that id (dry run)"""


def add_stream_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stream",
        choices=STREAMS,
        action="append",
        help="only this dead-letter stream (repeatable; default: all of them, every partition)",
    )


def register(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="inspect, replay and purge the dead-letter streams",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    commands = dlq.add_subparsers(
        dest="dlq_command",
        required=True,
        metavar="ACTION",
        help="`sesflow dlq ACTION --help` explains each one",
    )

    ls = commands.add_parser(
        "list",
        help="the most recent dead letters: id, stream, age, reason",
        description="List the most recent dead letters, newest first, with their reason, age "
        "and what they are about, and how many each stream holds.",
        epilog="examples:\n  sesflow dlq list\n  sesflow dlq list --stream sends --limit 200 "
        "--json",
        formatter_class=Formatter,
    )
    add_stream_option(ls)
    ls.add_argument(
        "--limit", type=int, default=50, metavar="N", help="how many to show (default 50)"
    )
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    show = commands.add_parser(
        "show",
        help="every field of one dead letter",
        description="Print every field of a dead letter, and for a sends entry the recipient's "
        "current delivery state.",
        epilog="examples:\n  sesflow dlq show 1718000000000-0\n  sesflow dlq show "
        "1718000000000-0 --stream sends --json",
        formatter_class=Formatter,
    )
    show.add_argument("id", metavar="ID", help="the dead letter's id, as `dlq list` shows it")
    add_stream_option(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    replay = commands.add_parser(
        "replay",
        help="put dead letters back where they came from",
        description=REPLAY_DESCRIPTION,
        epilog=REPLAY_EPILOG,
        formatter_class=Formatter,
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letters to replay")
    replay.add_argument(
        "--all", action="store_true", help="replay every entry of the selected streams"
    )
    add_stream_option(replay)
    replay.add_argument(
        "--force",
        action="store_true",
        help="replay entries that would be dead-lettered again (see above)",
    )
    replay.set_defaults(func=cmd_replay)

    purge_p = commands.add_parser(
        "purge",
        help="delete dead letters (needs --yes)",
        description=PURGE_DESCRIPTION,
        epilog=PURGE_EPILOG,
        formatter_class=Formatter,
    )
    add_stream_option(purge_p)
    purge_p.add_argument(
        "--before",
        metavar="ID|AGE",
        help="only entries older than this entry id, or than an age: 90m, 12h, 7d, 2w",
    )
    purge_p.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
    purge_p.set_defaults(func=cmd_purge)


def selected(settings: Settings, args: argparse.Namespace) -> list[DeadStream]:
    keys = Keys(settings.redis_prefix, settings.send_partitions)
    return dead_streams(keys, args.stream or STREAMS)


def dlq_client(settings: Settings) -> Any:
    """Replies keep any bytes a producer wrote (see common.consumer.consumer_client), so a
    replayed entry is written back exactly as it came."""
    open_redis(settings)  # the clear error when no Redis is configured
    return connect(settings, encoding_errors="surrogateescape")


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "stream": letter.stream.label,
        "id": letter.id,
        "time": when(letter.ms),
        "reason": printable(letter.reason),
        "about": printable(letter.summary()),
        "fields": {k: printable(v) for k, v in letter.fields.items()},
    }


# --- list / show ----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    settings = operator_settings()
    limit = max(1, args.limit)

    async def main() -> int:
        client = dlq_client(settings)
        try:
            streams = selected(settings, args)
            sizes = await lengths(client, streams)
            letters = await newest(client, streams, limit)
        finally:
            await client.aclose()
        if args.json:
            print_json({"sizes": sizes, "entries": [letter_json(d) for d in letters]})
            return EXIT_OK
        out = console()
        table = Table(
            title=f"dead letters (newest first, {len(letters)} of {sum(sizes.values()):,})",
            title_justify="left",
        )
        for column in ("id", "stream", "age", "reason", "about"):
            table.add_column(column, overflow="fold")
        now = int(time.time() * 1000)
        for d in letters:
            table.add_row(
                d.id,
                d.stream.label,
                age(d.ms, now),
                printable(d.reason)[:200],
                printable(d.summary()),
            )
        out.print(table)
        out.print("  ".join(f"{label}: {n:,}" for label, n in sizes.items()))
        return EXIT_OK

    return run(main)


def cmd_show(args: argparse.Namespace) -> int:
    settings = operator_settings()

    async def main() -> int:
        client = dlq_client(settings)
        try:
            found = await find(client, selected(settings, args), args.id)
            states = [await job_state(client, settings, d) for d in found]
        finally:
            await client.aclose()
        if not found:
            fail(f"no dead letter {args.id}", "`sesflow dlq list` shows their ids")
            return EXIT_FAILED
        if args.json:
            items = [{**letter_json(d), "state": s} for d, s in zip(found, states, strict=True)]
            print_json(items)  # a list: one id may exist in several streams
            return EXIT_OK
        out = console()
        for d, state in zip(found, states, strict=True):
            table = Table(title=f"{d.stream.label} {d.id}", title_justify="left", show_header=False)
            table.add_column("field", style="bold")
            table.add_column("value", overflow="fold")
            table.add_row("dead since", f"{when(d.ms)} ({age(d.ms)} ago)")
            table.add_row("reason", printable(d.reason))
            table.add_row("about", printable(d.summary()))
            if state is not None:
                table.add_row("state now", state or "(none: expired or never written)")
            for name, value in d.fields.items():
                table.add_row(name, printable(value))
            out.print(table)
        return EXIT_OK

    return run(main)


async def job_state(client: Redis, settings: Settings, letter: DeadLetter) -> str | None:
    """The current delivery state of a sends dead letter's recipient; None for other streams."""
    f = letter.fields
    if letter.stream.partition is None or letter.stream.kind != "sends" or "m" not in f:
        return None
    p = Keys(settings.redis_prefix, settings.send_partitions).partition(letter.stream.partition)
    index = f.get("i", "")
    return await recipient_state(client, p, f["m"], int(index)) if is_decimal(index) else ""


# --- replay ---------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        fail("give the IDs to replay, or --all (not both)", "`sesflow dlq list` shows the ids")
        return EXIT_USAGE
    settings = operator_settings()

    async def main() -> int:
        client = dlq_client(settings)
        keys = Keys(settings.redis_prefix, settings.send_partitions)
        replayer = Replayer(client, settings, keys, force=args.force)
        outcomes: list[Outcome] = []
        missing: list[str] = []
        try:
            streams = selected(settings, args)
            if args.all:
                for stream in streams:
                    async for letter in every(client, stream):
                        outcomes.append(await replayer.replay(letter))
            else:
                for entry_id in args.ids:
                    found = await find(client, streams, entry_id)
                    if not found:
                        missing.append(entry_id)
                    for letter in found:
                        outcomes.append(await replayer.replay(letter))
        finally:
            await client.aclose()
        render_outcomes(outcomes, missing)
        skipped = [o for o in outcomes if not o.replayed]
        return EXIT_FAILED if skipped or missing else EXIT_OK

    return run(main)


def render_outcomes(outcomes: list[Outcome], missing: list[str]) -> None:
    out = console()
    if outcomes:
        table = Table(title="replay", title_justify="left")
        for column in ("id", "stream", "result", "detail"):
            table.add_column(column, overflow="fold")
        for o in outcomes:
            result = "[green]replayed[/]" if o.replayed else "[yellow]skipped[/]"
            table.add_row(o.letter.id, o.letter.stream.label, result, o.detail)
        out.print(table)
    for entry_id in missing:
        out.print(f"[yellow]not found[/] {entry_id}")
    replayed = sum(o.replayed for o in outcomes)
    out.print(
        f"{replayed} replayed, {len(outcomes) - replayed} skipped"
        + (f", {len(missing)} not found" if missing else "")
    )


# --- purge ----------------------------------------------------------------------------------------


def before_id(text: str | None, now_ms: int | None = None) -> str | None:
    """--before as an entry id: an id as given, or `<now - age>-0` for an age."""
    if text is None:
        return None
    text = text.strip()
    if "-" in text or (text.isdigit() and len(text) >= 12):
        id_key(text)
        return text
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InputError("invalid_before", f"--before {text!r}: an entry id or an age") from exc
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{max(0, now_ms - int(seconds * 1000))}-0"


def cmd_purge(args: argparse.Namespace) -> int:
    settings = operator_settings()
    try:
        before = before_id(args.before)
    except InputError as exc:
        fail(exc.detail)
        return EXIT_USAGE

    async def main() -> int:
        client = dlq_client(settings)
        counts: dict[str, int] = {}
        try:
            for stream in selected(settings, args):
                if args.yes:
                    counts[stream.label] = await purge(client, stream, before)
                else:
                    counts[stream.label] = await count_before(client, stream, before)
        finally:
            await client.aclose()
        out = console()
        scope = f" older than {before} ({when(id_key(before)[0])})" if before else ""
        listed = ", ".join(f"{label} {n:,}" for label, n in counts.items())
        total = sum(counts.values())
        if args.yes:
            out.print(f"purged {total:,} dead letter(s){scope}: {listed}")
        else:
            out.print(f"would purge {total:,} dead letter(s){scope}: {listed}")
            out.print("nothing deleted: add --yes to delete them")
        return EXIT_OK

    return run(main)

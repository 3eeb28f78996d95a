"""`sesflow archive prune --before DATE`: remove old history from the archive (ARCHIVE_URL)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from sesflow.cli.output import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Formatter,
    console,
    fail,
    parse_duration,
    print_json,
    run,
    when,
)
from sesflow.common.errors import ArchiveUnavailable, InputError
from sesflow.common.settings import load_settings
from sesflow.stats.archive.db import connect_archive
from sesflow.stats.archive.prune import DEFAULT_BATCH, prune
from sesflow.stats.archive.url import target

DESCRIPTION = """\
Remove from the history archive (ARCHIVE_URL, default $SESFLOW_DATA_DIR/archive.db) the events
before DATE, the messages accepted before it with all their recipients, and the topics with
nothing left since. It deletes in batches of --batch rows, each its own short transaction, so
it can run while stats writes; stopped half-way, it can simply run again.

DATE is a UTC date or time (2026-01-31, 2026-01-31T12:00:00Z) or an age (90d, 12w)."""

EPILOG = """\
examples:
  sesflow archive prune --before 2026-01-01
  sesflow archive prune --before 180d --json

exit status: 0 when done; 2 for a bad DATE or setting; 3 when the archive cannot be reached."""


def register(sub: Any) -> None:
    archive = sub.add_parser("archive", help="look after the history archive (prune old history)")
    commands = archive.add_subparsers(dest="archive_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "prune",
        help="remove history older than a date",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("--before", required=True, metavar="DATE", help="remove history before it")
    p.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help=f"rows per transaction ({DEFAULT_BATCH})"
    )
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_prune)


def cutoff_ms(text: str, now: float | None = None) -> int:
    """DATE (a UTC date or time, or an age) -> epoch milliseconds; InputError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        return _date(text)
    except ValueError:
        pass
    if text[-1:].isalpha():  # an age; a bare number would be a date gone wrong
        try:
            return int((now - parse_duration(text)) * 1000)
        except ValueError:
            pass
    raise InputError(
        "bad --before", f"{text[:50]!r} is not a date (2026-01-31), a time or an age (90d)"
    )


def _date(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def cmd_prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.archive != "on":
        fail("the archive is off (ARCHIVE=off): nothing to prune")
        return EXIT_USAGE
    where = target(settings)

    async def main() -> int:
        before = cutoff_ms(args.before)
        try:
            db = await connect_archive(settings)
        except ArchiveUnavailable as exc:
            fail(f"cannot reach the archive: {exc}", "is ARCHIVE_URL right?")
            return EXIT_UNREACHABLE
        try:
            pruned = await prune(db, before, args.batch)
        except ArchiveUnavailable as exc:
            fail(f"the archive failed: {exc}", "run the prune again: it resumes")
            return EXIT_UNREACHABLE
        finally:
            await db.close()
        counts = {
            "before_ms": before,
            "events": pruned.events,
            "recipients": pruned.recipients,
            "messages": pruned.messages,
            "topics": pruned.topics,
        }
        if args.json:
            print_json(counts)
        else:
            console().print(
                f"archive ({where.backend}): removed {pruned.events} events, "
                f"{pruned.recipients} recipients, {pruned.messages} messages and "
                f"{pruned.topics} topics from before {when(before)}"
            )
        return EXIT_OK

    return run(main)

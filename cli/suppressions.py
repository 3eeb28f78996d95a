"""`sesflow suppressions sync` and `sesflow suppressions migrate`: an operator's upkeep of the
suppression list, straight against Redis (and SES for sync)."""

from __future__ import annotations

import argparse
from typing import Any

from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    console,
    fail,
    open_redis,
    operator_settings,
    print_json,
    run,
)
from sesflow.common.keys import Keys
from sesflow.common.ses_suppressions import SesMirrorError, import_from_ses
from sesflow.common.suppression import SuppressionList

DESCRIPTION = """\
sync: import SES's account-level suppression list (ListSuppressedDestinations, every page) into
sesflow's global suppression list, with reason bounce or complaint as SES says. Addresses sesflow
already holds keep their entry. Needs SES_SUPPRESSION_SYNC=1 (the sender's upkeep then also does
it every SES_SUPPRESSION_SYNC_INTERVAL seconds).

migrate: move global suppressions with reason "unsubscribe" (one-click unsubscribes recorded
before mailing lists existed) to the every-list scope "*": bulk mail of every list still skips
them, transactional mail reaches them again. Idempotent: run it as often as you like; the
tracker also runs it once at start."""

EPILOG = """\
examples:
  sesflow suppressions sync
  sesflow suppressions migrate --json

exit status: 0 when done; 1 when SES could not be read; 2 when sync is not enabled;
3 when Redis cannot be reached."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "suppressions",
        help="import SES's suppression list, or migrate older unsubscribes to list scopes",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("action", choices=("sync", "migrate"), metavar="ACTION", help="sync, migrate")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_suppressions)


def cmd_suppressions(args: argparse.Namespace) -> int:
    settings = operator_settings()
    if args.action == "sync" and not settings.ses_suppression_sync:
        fail(
            "SES_SUPPRESSION_SYNC is off",
            "set SES_SUPPRESSION_SYNC=1 to mirror SES's account-level suppression list",
        )
        return EXIT_USAGE

    async def main() -> int:
        client = open_redis(settings)
        try:
            suppressions = SuppressionList(client, Keys(settings.redis_prefix))
            if args.action == "migrate":
                moved = await suppressions.migrate_unsubscribes()
                outcome: dict[str, Any] = {"migrated": moved}
                text = f"{moved} global unsubscribes moved to the every-list scope"
            else:
                try:
                    read, added = await import_from_ses(settings, suppressions)
                except SesMirrorError as exc:
                    fail(str(exc), "are the AWS credentials and region right?")
                    return EXIT_FAILED
                outcome = {"read": read, "added": added}
                text = f"{read} addresses on SES's suppression list, {added} new to sesflow's"
        finally:
            await client.aclose()
        if args.json:
            print_json(outcome)
        else:
            console().print(text)
        return EXIT_OK

    return run(main)

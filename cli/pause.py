"""`sesflow pause TOPIC|--all` and `sesflow resume TOPIC|--all`: the ingest API's pause routes
(they are those calls), for an operator who needs to hold mail now."""

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
    operator_settings,
    print_json,
    run,
    when,
)

DESCRIPTION = {
    "pause": """\
Pause a topic's bulk mail, or all bulk mail with --all. Paused recipients keep their place in
the queue, take no rate token and are not failed; scheduled ones wait too when they fall due.
Transactional mail ("lane": "transactional") is never paused. The few jobs already handed to a
sender still go out. Pausing twice keeps the first reason and time (a reputation-guard pause
stays one). Nothing resumes by itself: `sesflow resume`.

This calls the ingest API (POST /v1/topics/{topic}/pause or POST /v1/pause, with API_KEY or a
JWT_SECRET token when set).""",
    "resume": """\
Resume a paused topic, or all bulk mail with --all: its recipients go on from where they were,
sharing the rate fairly with the other topics. Topics paused on their own stay paused after
`resume --all`. Resuming what is not paused is harmless.

This calls the ingest API (POST /v1/topics/{topic}/resume or POST /v1/resume).""",
}

EPILOG = """\
examples:
  sesflow {verb} june-news
  sesflow {verb} --all
  sesflow {verb} june-news --ingest-url http://ingest.internal:3000 --json

exit status: 0 when done; 1 when ingest refused; 3 when it cannot be reached."""


def register(sub: Any) -> None:
    for verb, help_text in (
        ("pause", "hold a topic's bulk mail (or all of it) without failing anything"),
        ("resume", "let a paused topic (or all bulk mail) go on"),
    ):
        p = sub.add_parser(
            verb,
            help=help_text,
            description=DESCRIPTION[verb],
            epilog=EPILOG.format(verb=verb),
            formatter_class=Formatter,
        )
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("topic", nargs="?", metavar="TOPIC", help=f"the topic to {verb}")
        which.add_argument("--all", action="store_true", help=f"{verb} all bulk mail")
        INGEST.add_url_option(p)
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        p.set_defaults(func=cmd_pause, verb=verb)


def cmd_pause(args: argparse.Namespace) -> int:
    settings = operator_settings()
    base = INGEST.base(settings, args.ingest_url)
    if args.all:
        path, what = f"/v1/{args.verb}", "all bulk mail"
    else:
        path, what = f"/v1/topics/{quote(args.topic, safe='')}/{args.verb}", repr(args.topic)

    async def main() -> int:
        try:
            answer = await call_ingest(settings, base, "POST", path, f"{args.verb} {what}")
        except Refused:
            return EXIT_FAILED
        if args.json:
            print_json(answer)
        elif answer["paused"]:
            console().print(
                f"{what} paused since {when(int(answer['paused_at']))} "
                f"(reason: {answer['paused_reason']}); `sesflow resume` lets it go on"
            )
        else:
            console().print(f"{what} is not paused: its mail goes out")
        return EXIT_OK

    return run(main)

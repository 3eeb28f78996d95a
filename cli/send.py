"""`sesflow send FILE`: enqueue a campaign from a CSV or JSON list of recipients, then follow the
topic with a progress bar until every recipient is finished, and print a summary table."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import mimetypes
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sesflow.cli.api_call import INGEST
from sesflow.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    Unreachable,
    auth_headers,
    console,
    fail,
    http_error,
    local_url,
    open_redis,
    operator_settings,
    parse_duration,
    run,
)
from sesflow.cli.recipients import Recipients, RecipientsError, parse, read_bytes
from sesflow.cli.stats_report import read_topic, topic_table
from sesflow.common.connection import Redis
from sesflow.common.errors import InputError
from sesflow.common.keys import Keys
from sesflow.common.producer import enqueue
from sesflow.common.schema import BULK, LANES, Attachment, MessageRequest, Recipient
from sesflow.common.settings import Settings
from sesflow.ingest.templates import stand_in
from sesflow.ingest.validation import Limits, format_schedule, parse_schedule, validate_message
from sesflow.stats.queries import FINAL_FIELDS

DESCRIPTION = """\
Send one HTML message to every recipient listed in FILE, as topic TOPIC.

Recipients: CSV (the column named `email`, else the first column holding an address; a header
row is optional; `,` `;` or tab separated) or JSON (a list of addresses or of objects with an
`email` key). FILE `-` reads standard input. Invalid addresses are listed and left out before
anything is sent (--strict refuses to send instead); duplicates are sent once.

Personalisation: the other columns of a CSV with a header row (the other keys of a JSON object,
or its `data` object) are each recipient's merge data: `{{first_name}}` in the subject, HTML or
text is replaced by that recipient's value (empty cells are left out; a placeholder some
recipient cannot fill is refused before anything is sent; --data gives defaults for every
recipient). --template NAME uses a stored
template (PUT /v1/templates/NAME) instead of --subject / --html / --text. --text gives the
plain-text part (generated from the HTML otherwise), --reply-to and --attach may be repeated.

Sharing the rate: --lane transactional takes the next rate token before any bulk mail (for
receipts and resets, not campaigns); bulk topics sending at the same time share what is left,
in proportion to --weight (default 1).

Deliverability: --list names the mailing list whose unsubscribes this campaign honours (default:
the topic's); --configuration-set and --tenant pick the SES configuration set and tenant, within
SES_CONFIGURATION_SETS and SES_TENANTS.

The recipients are enqueued through the ingest API (POST /v1/messages), one message per
--batch recipients, with API_KEY (x-api-key) or a JWT_SECRET token when those are set. Every
batch carries an Idempotency-Key derived from the file, the topic and the batch number: running
the same command again within 24 h (after a crash or Ctrl-C) enqueues only the batches that
were not accepted yet (to send the same list again on purpose, use another --topic). --direct
writes to the `requests` stream in Redis instead (no ingest needed, but no such protection).

Then a progress bar follows the topic (finished = sent + failed + stopped + suppressed +
unknown, out of total) until every recipient is finished, and a summary table is printed.
Ctrl-C stops following only: the campaign goes on (`sesflow stats TOPIC` shows it later,
`sesflow cancel TOPIC` stops it). The counts are read from Redis (REDIS_URL, or the Redis of a
running `sesflow up`), else from the stats API (--stats-url)."""

EPILOG = """\
examples:
  sesflow send customers.csv --topic june-news --subject "June news" --html june.html
  sesflow send list.json --topic promo --subject Sale --html sale.html --at "2024-06-01 09:00:00"
  sesflow send list.csv --topic reminder --subject Reminder --html r.html --at +2h --no-follow
  cut -d, -f3 export.csv | sesflow send - --topic t --subject S --html m.html --direct
  sesflow send people.csv --topic spring --template welcome --reply-to help@example.com \
      --attach terms.pdf      # people.csv: email,first_name,code -> {{first_name}}, {{code}}

exit status: 0 when enqueued (and, when following, finished); 2 for bad input; 3 when ingest,
Redis or the stats API cannot be reached; 130 after Ctrl-C."""

POLL_INTERVAL_S = 0.5
HTTP_ATTEMPTS = 5
CONNECT_ATTEMPTS = 3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "send",
        help="send a campaign to a CSV/JSON list of recipients, with a progress bar",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("file", metavar="FILE", help="recipients: .csv or .json file, or - for stdin")
    p.add_argument("--topic", required=True, help="topic (campaign) name, used by stats and cancel")
    p.add_argument("--subject", help="the subject line (required without --template)")
    p.add_argument(
        "--html",
        metavar="FILE",
        help="file holding the HTML body (UTF-8; required without --template)",
    )
    p.add_argument(
        "--text",
        metavar="FILE",
        help="file holding the plain-text part (default: generated from the HTML)",
    )
    p.add_argument(
        "--template",
        metavar="NAME",
        help="a stored template (PUT /v1/templates/NAME) instead of --subject/--html/--text",
    )
    p.add_argument(
        "--lane",
        choices=LANES,
        default=BULK,
        help="bulk (default): shares the rate fairly with other topics; transactional: first",
    )
    p.add_argument(
        "--weight",
        type=float,
        metavar="W",
        help="this topic's share of the bulk rate against other topics sending meanwhile "
        "(default 1)",
    )
    p.add_argument(
        "--list",
        dest="mailing_list",
        metavar="NAME",
        help="the mailing list whose one-click unsubscribes stop this mail (default: the topic's)",
    )
    p.add_argument(
        "--configuration-set",
        metavar="NAME",
        help="the SES configuration set (default SES_CONFIGURATION_SET; must be allowed)",
    )
    p.add_argument("--tenant", metavar="NAME", help="the SES tenant (must be in SES_TENANTS)")
    p.add_argument(
        "--reply-to",
        dest="reply_to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a Reply-To address (repeat for several, at most 10)",
    )
    p.add_argument(
        "--data",
        metavar="JSON",
        help='merge defaults for every recipient, a JSON object: \'{"first_name": "there"}\' '
        "(a recipient's own columns win)",
    )
    p.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="attach a file (repeat for several; content type guessed from the name)",
    )
    p.add_argument(
        "--at",
        metavar="WHEN",
        help="send later: RFC 3339 ('2024-06-01T09:00:00+02:00'), 'YYYY-MM-DD HH:MM:SS' (UTC) "
        "or relative: +30m, +2h, +1d (default: now)",
    )
    p.add_argument(
        "--from",
        dest="from_email",
        metavar="ADDRESS",
        help="sender address, a verified SES identity (default: EMAIL_SENDER)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1000,
        metavar="N",
        help="recipients per message / API request (default 1000, at most MAX_RECIPIENTS)",
    )
    p.add_argument(
        "--no-track-opens", action="store_true", help="do not add the open-tracking pixel"
    )
    p.add_argument("--track-clicks", action="store_true", help="rewrite links to count clicks")
    p.add_argument(
        "--no-unsubscribe",
        action="store_true",
        help="no List-Unsubscribe headers (transactional mail)",
    )
    p.add_argument("--strict", action="store_true", help="send nothing when any address is invalid")
    p.add_argument(
        "--no-follow",
        action="store_true",
        help="return once enqueued, without the progress bar",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="XADD to the Redis `requests` stream instead of calling the ingest API",
    )
    INGEST.add_url_option(p)
    p.add_argument(
        "--stats-url",
        metavar="URL",
        help="stats API base URL, used to follow progress when Redis is not reachable "
        "from here (default STATS_URL, else http://127.0.0.1:STATS_PORT)",
    )
    p.set_defaults(func=cmd_send)


# --- preparing the campaign ---------------------------------------------------------------------


def resolve_when(text: str | None, now: float | None = None) -> str | None:
    """--at as RFC 3339 UTC; `+<duration>` counts from now. InputError when unreadable."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("+"):
        try:
            seconds = parse_duration(text[1:])
        except ValueError as exc:
            raise InputError("invalid_schedule", f"--at {text!r}: use e.g. +30m, +2h") from exc
        moment = (time.time() if now is None else now) + seconds
        return (
            datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    return format_schedule(parse_schedule(text))


@dataclass(frozen=True, slots=True)
class Content:
    """What every batch's message carries besides its recipients."""

    html: str = ""
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    data: dict[str, Any] | None = None  # merge defaults for every recipient


def read_content(args: argparse.Namespace) -> Content:
    """--html, --text and --attach files (OSError / UnicodeDecodeError when unreadable), and
    --data; InputError for a missing or conflicting option."""
    if args.template:
        given = [f"--{name}" for name in ("subject", "html", "text") if getattr(args, name)]
        if given:
            raise InputError("usage", f"--template gives the content: leave out {', '.join(given)}")
    elif not args.subject or not args.html:
        raise InputError("usage", "--subject and --html are required (or --template NAME)")
    html = Path(args.html).read_text(encoding="utf-8") if args.html else ""
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    attachments = tuple(
        Attachment(
            filename=Path(path).name,
            content=base64.b64encode(Path(path).read_bytes()).decode(),
            content_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
        )
        for path in args.attach
    )
    data = None
    if getattr(args, "data", None):
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise InputError("usage", f"--data is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError("usage", '--data must be a JSON object, e.g. {"first_name": "there"}')
    return Content(html=html, text=text, attachments=attachments, data=data)


@dataclass(frozen=True, slots=True)
class Batch:
    index: int
    message: MessageRequest
    key: str  # Idempotency-Key


def plan(
    args: argparse.Namespace, data: bytes, recipients: Recipients, content: Content | str
) -> list[Batch]:
    """One message per --batch recipients, each with its Idempotency-Key."""
    if isinstance(content, str):
        content = Content(html=content)
    template = getattr(args, "template", None)
    digest = hashlib.sha256()
    for part in (data, args.topic.encode(), str(args.batch).encode()):
        digest.update(part)
        digest.update(b"\0")
    run_id = digest.hexdigest()[:32]
    scheduled = resolve_when(args.at)
    batches = []
    for n, start in enumerate(range(0, len(recipients.emails), args.batch)):
        emails = recipients.emails[start : start + args.batch]
        listed: dict[str, Any] = {"emails": emails}
        if recipients.personalised:
            own = recipients.data[start : start + args.batch]
            listed = {
                "recipients": [
                    Recipient(email=email, data=data or None)
                    for email, data in zip(emails, own, strict=True)
                ]
            }
        message = MessageRequest(
            topic_id=args.topic,
            subject="" if template else args.subject,
            content=content.html,
            text=content.text,
            template=template,
            scheduled_at=scheduled,
            track_opens=not args.no_track_opens,
            track_clicks=args.track_clicks,
            unsubscribe=not args.no_unsubscribe,
            from_email=args.from_email,
            reply_to=list(getattr(args, "reply_to", None) or []),
            attachments=list(content.attachments),
            lane=getattr(args, "lane", BULK),
            data=content.data,
            **listed,
            # Only when given: the body then reads as the older clients wrote it.
            **({"weight": args.weight} if getattr(args, "weight", None) is not None else {}),
            **chosen_setup(args),
        )
        batches.append(Batch(n, message, f"sesflow-send-{run_id}-{n}"))
    return batches


def chosen_setup(args: argparse.Namespace) -> dict[str, Any]:
    """The message's list, SES configuration set and tenant, as far as the command names them."""
    fields = ("mailing_list", "configuration_set", "tenant")
    return {name: value for name in fields if (value := getattr(args, name, None))}


def report_recipients(out: Console, recipients: Recipients) -> None:
    if recipients.invalid:
        out.print(
            f"[yellow]{len(recipients.invalid)} invalid address(es) left out[/] (line/item: value):"
        )
        for where, value in recipients.invalid[:20]:
            why = recipients.why.get(where)
            out.print(f"  {where}: {value!r}" + (f" {why}" if why else ""), markup=False)
        if len(recipients.invalid) > 20:
            out.print(f"  … and {len(recipients.invalid) - 20} more")
    if recipients.converted:
        out.print(
            f"{len(recipients.converted)} internationalised domain(s) converted to punycode "
            "(SES takes ASCII only):"
        )
        for where, given, sent in recipients.converted[:20]:
            out.print(f"  {where}: {given} -> {sent}", markup=False)
        if len(recipients.converted) > 20:
            out.print(f"  … and {len(recipients.converted) - 20} more")
    if recipients.duplicates:
        out.print(f"{recipients.duplicates} duplicate address(es) will be sent once")


# --- enqueueing -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Enqueued:
    recipients: int = 0  # accepted now
    replayed: int = 0  # accepted by an earlier run (same Idempotency-Key)
    messages: int = 0


def message_body(message: MessageRequest) -> dict[str, Any]:
    """The POST body: the message as the API reads it (fields left at their default omitted)."""
    body: dict[str, Any] = msgspec.to_builtins(message)
    # The flags are always spelt out, as the older clients did.
    body.update(
        track_opens=message.track_opens,
        track_clicks=message.track_clicks,
        unsubscribe=message.unsubscribe,
    )
    return {"messages": [body]}


async def post_batch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], batch: Batch
) -> tuple[int, bool]:
    """POST one batch; (recipients accepted, whether an earlier run had already enqueued it).
    Retries what is safe to retry (503, 409 in progress, connection errors): the key makes a
    retried request harmless."""
    body = message_body(batch.message)
    for attempt in range(HTTP_ATTEMPTS):
        delay = min(0.5 * 2**attempt, 5.0)
        try:
            async with http.post(
                url, json=body, headers={**headers, "Idempotency-Key": batch.key}
            ) as resp:
                if resp.status == 202:
                    answer = await resp.json()
                    return int(answer["count"]), resp.headers.get("Idempotent-Replayed") == "true"
                problem = await http_error(resp)
                retry_after = resp.headers.get("Retry-After", "")
                if resp.status == 503 or "idempotency_in_progress" in problem:
                    delay = float(retry_after) if retry_after.isdigit() else delay
                elif "idempotency_conflict" in problem:
                    raise InputError(
                        "idempotency_conflict",
                        f"batch {batch.index} of this file and topic was enqueued within the last "
                        "24 h with a different subject, content or schedule; send it as a new "
                        "--topic, or repeat the first run's exact options",
                        409,
                    )
                else:
                    raise InputError("rejected", f"ingest refused batch {batch.index}: {problem}")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            # A few quick tries ride out a restart; a service that is not there fails fast.
            if attempt >= CONNECT_ATTEMPTS - 1:
                raise Unreachable(
                    f"cannot reach the ingest API at {url}: {exc or type(exc).__name__} "
                    "(is `sesflow up` or the ingest role running? --direct skips it)"
                ) from exc
        await asyncio.sleep(delay)
    raise Unreachable(f"the ingest API at {url} kept answering 503 / in progress; try again")


async def enqueue_http(
    settings: Settings, base_url: str, batches: list[Batch], progress: Progress
) -> Enqueued:
    url = base_url.rstrip("/") + "/v1/messages"
    done = Enqueued()
    task = progress.add_task("enqueueing", total=sum(b.message.recipient_count for b in batches))
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for batch in batches:
            count, replayed = await post_batch(http, url, auth_headers(settings), batch)
            if replayed:
                done.replayed += count
            else:
                done.recipients += count
            done.messages += 1
            progress.advance(task, batch.message.recipient_count)
    return done


async def enqueue_direct(
    client: Redis, keys: Keys, batches: list[Batch], progress: Progress
) -> Enqueued:
    done = Enqueued()
    task = progress.add_task("enqueueing", total=sum(b.message.recipient_count for b in batches))
    for batch in batches:
        await enqueue(client, keys, batch.message)
        done.recipients += batch.message.recipient_count
        done.messages += 1
        progress.advance(task, batch.message.recipient_count)
    return done


# --- following the topic ------------------------------------------------------------------------

TopicReader = Callable[[], Awaitable[dict[str, Any] | None]]


def redis_reader(client: Redis, keys: Keys, topic: str) -> TopicReader:
    return lambda: read_topic(client, keys, topic)


def http_reader(
    http: aiohttp.ClientSession, base_url: str, headers: dict[str, str], topic: str
) -> TopicReader:
    url = f"{base_url.rstrip('/')}/v1/topics/{quote(topic, safe='')}"

    async def read() -> dict[str, Any] | None:
        try:
            async with http.get(url, headers=headers) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise Unreachable(f"the stats API at {url} answered {await http_error(resp)}")
                row: dict[str, Any] = await resp.json()
                return row
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(
                f"cannot reach the stats API at {base_url} to follow progress: {exc} "
                "(set REDIS_URL or --stats-url, or use --no-follow)"
            ) from exc

    return read


def finished(row: dict[str, Any] | None) -> int:
    return sum(int((row or {}).get(name, 0)) for name in FINAL_FIELDS)


def status_line(row: dict[str, Any] | None) -> str:
    row = row or {}
    return " · ".join(f"{name} {int(row.get(name, 0)):,}" for name in FINAL_FIELDS)


async def follow(
    read: TopicReader, expected_total: int, progress: Progress, scheduled: str | None
) -> dict[str, Any] | None:
    """Poll the topic until its total reaches what was enqueued and nothing is pending."""
    label = f"scheduled for {scheduled}" if scheduled else "sending"
    task = progress.add_task(label, total=max(1, expected_total))
    row: dict[str, Any] | None = None
    while True:
        row = await read()
        total = int((row or {}).get("total", 0))
        progress.update(
            task,
            total=max(1, total, expected_total),
            completed=finished(row),
            description=f"{label}  {status_line(row)}",
        )
        if row is not None and total >= expected_total and int(row.get("created", 0)) == 0:
            return row
        await asyncio.sleep(POLL_INTERVAL_S)


def progress_bar(out: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    )


# --- the command ----------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    settings = operator_settings()
    out = console()
    try:
        data = read_bytes(args.file)
        recipients = parse(args.file, data)
        content = read_content(args)
    except (RecipientsError, OSError, UnicodeDecodeError) as exc:
        fail(str(exc))
        return EXIT_USAGE
    except InputError as exc:
        fail(exc.detail)
        return EXIT_USAGE
    report_recipients(out, recipients)
    if not recipients.emails:
        fail(f"no valid address in {args.file}")
        return EXIT_USAGE
    if recipients.invalid and args.strict:
        fail("invalid addresses found and --strict given: nothing was sent")
        return EXIT_USAGE
    if not 1 <= args.batch <= settings.max_recipients:
        fail(f"--batch must be between 1 and MAX_RECIPIENTS ({settings.max_recipients})")
        return EXIT_USAGE
    try:
        batches = plan(args, data, recipients, content)
        # The API's own checks (topic, subject, content, sizes, schedule, sender, merge data,
        # attachments), before any I/O; a template's content is checked by ingest.
        limits = Limits.from_settings(settings)
        for batch in batches:
            validate_message(stand_in(batch.message), limits, strict=True)
    except InputError as exc:
        fail(exc.detail or exc.error)
        return EXIT_USAGE
    scheduled = batches[0].message.scheduled_at
    return run(lambda: send(settings, args, batches, scheduled, out))


async def send(
    settings: Settings,
    args: argparse.Namespace,
    batches: list[Batch],
    scheduled: str | None,
    out: Console,
) -> int:
    keys = Keys(settings.redis_prefix, settings.send_partitions)
    client = open_redis(settings) if settings.redis_url or args.direct else None
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=5))
    read: TopicReader
    if client is not None:
        read = redis_reader(client, keys, args.topic)
    else:
        stats_url = args.stats_url or settings.stats_url or local_url(settings, settings.stats_port)
        read = http_reader(http, stats_url, auth_headers(settings), args.topic)
    row: dict[str, Any] | None = None
    done = Enqueued()
    try:
        before = await read() if not args.no_follow else None
        with progress_bar(out) as progress:
            if args.direct:
                assert client is not None  # --direct always opens Redis
                done = await enqueue_direct(client, keys, batches, progress)
            else:
                ingest_url = args.ingest_url or local_url(settings, settings.ingest_port)
                done = await enqueue_http(settings, ingest_url, batches, progress)
            if args.no_follow:
                summary_line(out, args.topic, done, scheduled)
                return EXIT_OK
            expected = int((before or {}).get("total", 0)) + done.recipients
            row = await follow(read, expected, progress, scheduled)
    except asyncio.CancelledError:
        # Ctrl-C: stop following, say where things stand (the campaign itself goes on).
        summary_line(out, args.topic, done, scheduled)
        if done.messages < len(batches):
            out.print(
                "interrupted while enqueueing: run the same command again to enqueue the rest"
            )
        out.print(
            f"stopped following; the campaign goes on: `sesflow stats {args.topic}` to check, "
            f"`sesflow cancel {args.topic}` to stop it"
        )
        raise
    finally:
        await http.close()
        if client is not None:
            await client.aclose()
    summary_line(out, args.topic, done, scheduled)
    if row is not None:
        out.print(topic_table(row, title=f"topic {args.topic}: done"))
    return EXIT_OK


def summary_line(out: Console, topic: str, done: Enqueued, scheduled: str | None) -> None:
    text = f"enqueued {done.recipients:,} recipient(s) in {done.messages} message(s) as {topic!r}"
    if done.replayed:
        text += f" ({done.replayed:,} already enqueued by an earlier run)"
    if scheduled:
        text += f", scheduled for {scheduled}"
    out.print(text)

"""`POST /v1/events/results` (alias `/v1/events/result`): the SNS webhook.

Fast path: verify, correlate (at most a GET and a cached HGET), write, answer. Status codes tell
SNS what to do: 2xx processed or duplicate (done), 403 not provably ours, 400 malformed (neither
is retried usefully), 503 Redis or the signing certificate unavailable (SNS retries).

Exactly once, with the MessageId as the identity of a delivery
----------------------------------------------------------------
The dedupe mark and the events are written by one Lua script (`record_events`) in the partition
the events belong to: the mark lives beside that partition's `events` stream (same hash tag), so
"mark + XADD" is one atomic step on Redis and on Redis Cluster. A crash or a Redis failure before
the script leaves neither (SNS's retry records the events); after it, both (the retry is a
duplicate). The global `sns_seen` key would sit in another slot, so a mark there could be written
without its events (a lost event) or the events without the mark (a double count).

Suppression writes come first, outside the script: they are idempotent (HSETNX keeps the first
reason), so a retry after a failure between them and the script repeats them harmlessly, while the
reverse order could record a hard bounce whose address is never suppressed. The soft-bounce count
(`tracker.soft_bounces`) comes before them for the same reason, and is idempotent too (a member
per bounced mail, not an increment). A cheap look-up of the mark skips them for the common
duplicate. One notification's events all belong to one mail, hence to one partition (or
partition 0 when sesflow cannot place the mail).
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from sesflow.common.connection import redis_errors
from sesflow.common.errors import InputError
from sesflow.common.http import decode_json, error_response, json_response, read_body
from sesflow.common.logs import get_logger
from sesflow.common.suppression import entry
from sesflow.tracker import metrics, ses_events, sns
from sesflow.tracker.context import TRACKER, Tracker
from sesflow.tracker.recorder import DUPLICATE, FirstTouch, Pending, first_click, first_open

log = get_logger(__name__)

NO_TOPICS = (
    "SNS_TOPIC_ARNS is not set: every SNS message is refused (403). Set it to the ARNs of your "
    "SES feedback topics (or `*` to accept any topic, which lets anyone report bounces)"
)
DEDUPE_TTL = 24 * 3600  # SNS gives up retrying well within a day; stale messages are refused
MAX_BODY = 2 * 1024 * 1024  # SNS messages are at most 256 KiB, JSON escaping can double that


async def sns_webhook(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    body = await read_body(request, min(tracker.settings.max_request_bytes, MAX_BODY))
    try:
        msg = decode_json(body, sns.decode, "not an SNS message: body", "malformed")
    except InputError:
        metrics.SNS_MESSAGES.labels("invalid", "malformed").inc()
        raise
    kind = sns.message_type(msg)
    try:
        await tracker.verifier.verify(msg)
        if isinstance(msg, sns.SubscriptionConfirmation):
            tracker.verifier.check_subscribe_url(msg)
    except sns.SnsRejected as exc:
        metrics.SNS_REJECTED.labels(exc.reason).inc()
        metrics.SNS_MESSAGES.labels(kind, "rejected").inc()
        log_refusal(tracker, exc, kind)
        return error_response(403, "forbidden", str(exc))
    except sns.CertUnavailable as exc:
        metrics.SNS_REJECTED.labels("cert_unavailable").inc()
        allowed, held = tracker.refusal_logs.allow("cert_unavailable")
        if allowed:
            log.warning("sns certificate unavailable", error=str(exc), since_last_line=held)
        return error_response(503, "unavailable", str(exc), headers={"Retry-After": "5"})

    if not msg.message_id:
        raise InputError("malformed", "MessageId is missing")
    if isinstance(msg, sns.SubscriptionConfirmation):
        return await confirm(tracker, msg)
    if isinstance(msg, sns.UnsubscribeConfirmation):
        metrics.SNS_MESSAGES.labels(kind, "logged").inc()
        log.warning("sns subscription ended", topic=msg.topic_arn, message=str(msg.message)[:200])
        return json_response({"status": "logged"})
    return await notification(tracker, msg)


def log_refusal(tracker: Tracker, exc: sns.SnsRejected, kind: str) -> None:
    """Once a minute per reason: anyone can post forged messages, as fast as they like."""
    allowed, held = tracker.refusal_logs.allow(exc.reason)
    if not allowed:
        return
    if exc.reason == "no_topics":
        log.warning(NO_TOPICS, type=kind, since_last_line=held)
        return
    log.warning(
        "sns message refused",
        reason=exc.reason,
        detail=exc.detail,
        type=kind,
        since_last_line=held,
    )


async def confirm(tracker: Tracker, msg: sns.SubscriptionConfirmation) -> web.Response:
    if not await sns.confirm_subscription(tracker.http, msg.subscribe_url):
        metrics.SNS_MESSAGES.labels("SubscriptionConfirmation", "failed").inc()
        return error_response(502, "confirm_failed", "SNS did not accept the confirmation")
    metrics.SNS_MESSAGES.labels("SubscriptionConfirmation", "confirmed").inc()
    log.info("sns subscription confirmed", topic=msg.topic_arn)
    return json_response({"status": "confirmed"})


async def notification(tracker: Tracker, msg: sns.Notification) -> web.Response:
    if isinstance(msg.message, str) and msg.message.startswith(sns.VALIDATION_MESSAGE_PREFIX):
        metrics.SNS_MESSAGES.labels("Notification", "ignored").inc()
        log.info("sns topic validation message ignored", topic=msg.topic_arn)
        return json_response({"status": "ignored"})
    try:
        note = ses_events.decode(msg.message)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        metrics.SNS_MESSAGES.labels("Notification", "malformed").inc()
        raise InputError("malformed", f"Message is not an SES event: {exc}") from exc

    feedback = ses_events.normalise(note)
    where = await tracker.correlator.correlate(
        feedback.ses_id, feedback.rid, feedback.topic_tag, feedback.sent_ms
    )
    drafts = tracker.correlator.apply(feedback, where)
    keys = tracker.keys
    part = keys.for_message(where.msg_id) if where.msg_id else keys.partition(0)

    # The EXISTS only spares a duplicate its suppression writes and soft-bounce count, so it is
    # asked only when there are some: for the common feedback (deliveries, opens) record_events
    # alone tells a duplicate, and one Redis round trip fewer is ~20% of the tracker's CPU per
    # notification.
    soft = tracker.soft_bounces
    if any((d.suppress and d.event.email) or soft.counts(d) for d in drafts):
        with redis_errors():
            if await tracker.recorder.seen(part, msg.message_id, dedupe_ttl(tracker)):
                metrics.SNS_MESSAGES.labels("Notification", "duplicate").inc()
                return json_response({"status": "duplicate"})
        drafts = await soft.apply(drafts, feedback.ses_id or msg.message_id)
        with redis_errors():
            await suppress(tracker, drafts)
    items = [Pending(d.event, touch(d, where.index)) for d in drafts]
    added = await tracker.recorder.record(
        part,
        where.msg_id,
        items,
        dedupe_id=msg.message_id,
        dedupe_ttl=dedupe_ttl(tracker),
    )
    if added == DUPLICATE:
        metrics.SNS_MESSAGES.labels("Notification", "duplicate").inc()
        return json_response({"status": "duplicate"})
    metrics.SNS_MESSAGES.labels("Notification", "processed").inc()
    metrics.count_events([d.event.type for d in drafts])
    # Debug, not info: at thousands of notifications a second, a line each costs more than the
    # signature check; /metrics counts them.
    log.debug(
        "ses feedback recorded",
        kind=note.kind,
        ses_id=feedback.ses_id,
        msg_id=where.msg_id,
        index=where.index,
        events=added,
    )
    return json_response({"status": "processed", "events": added})


def dedupe_ttl(tracker: Tracker) -> int:
    """Outlive the age at which a replay is refused anyway, whatever SNS_MAX_AGE says."""
    return max(DEDUPE_TTL, int(tracker.settings.sns_max_age) + 3600)


def touch(draft: ses_events.Draft, index: int) -> FirstTouch | None:
    if draft.touch == "open":
        return first_open(index)
    if draft.touch == "click":
        return first_click(index)
    return None


async def suppress(tracker: Tracker, drafts: list[ses_events.Draft]) -> None:
    wanted = [d for d in drafts if d.suppress and d.event.email]
    if not wanted:
        return
    pipe = tracker.client.pipeline(transaction=False)
    for d in wanted:
        detail = ": ".join(filter(None, (d.event.bounce_subtype, d.event.detail)))
        item = entry(d.event.email, d.suppress, detail=detail[:500], topic=d.event.topic)
        await tracker.suppressions.add(item, pipe)
    await pipe.execute()

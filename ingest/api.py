"""The ingest HTTP API (aiohttp, INGEST_PORT).

    POST   /v1/messages                 validate the whole request, then one `requests` entry per
                                        message object, all or none (one MULTI); 202
    DELETE /v1/topics/{topic_id}        cancel a topic (see `delete_topic`)
    GET    /v1/suppressions             the suppression list, paginated (?cursor=&limit=);
                                        ?scope=lists: the list unsubscribes
    GET    /v1/suppressions/{email}     one entry with its scopes, 404 when not suppressed
    PUT    /v1/suppressions/{email}     suppress by hand (body: {"reason", "detail"}, optional;
                                        ?list= or "list": leave one list instead)
    DELETE /v1/suppressions/{email}     remove every scope, or one (?list=, ?scope=global),
                                        404 when it was not there
    (PUT and DELETE of the global entry are copied to SES's list first with SES_SUPPRESSION_SYNC)
    PUT|GET|DELETE /v1/templates/{name}, GET /v1/templates   stored templates
                                        (see `ingest.templates_api`)
    GET    /health                      readiness: 503 when Redis does not answer PING
    GET    /livez                       liveness: no Redis (neither needs credentials)
    GET    /metrics                     Prometheus metrics (never needs credentials)

Everything but /health, /livez and /metrics needs API_KEY or a JWT_SECRET bearer token when
either is set. Bad input is a 4xx JSON `{"error", "detail"}`; Redis errors propagate to
`errors_middleware` (503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
from aiohttp import web
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sesflow.common import scripts
from sesflow.common.addresses import InvalidAddress, ascii_address
from sesflow.common.connection import Redis, connect
from sesflow.common.errors import InputError
from sesflow.common.http import (
    HEALTH_PATHS,
    add_health_routes,
    auth_middleware,
    decode_json,
    errors_middleware,
    int_param,
    json_response,
    read_body,
)
from sesflow.common.keys import Keys
from sesflow.common.mailing_lists import ALL_LISTS, check_list
from sesflow.common.pauses import Pauses
from sesflow.common.producer import entry_fields
from sesflow.common.schema import REQUEST_FIELD, MessageRequest, encode
from sesflow.common.ses_suppressions import SesMirrorError, mirror_delete, mirror_put
from sesflow.common.settings import Settings
from sesflow.common.suppression import ListScope, Suppression, SuppressionList, entry, normalise
from sesflow.ingest import metrics
from sesflow.ingest.compat import PUBLIC_PATHS, add_compat_routes
from sesflow.ingest.dashboard_cors import dashboard_cors
from sesflow.ingest.idempotency import Claim, IdempotencyStore, Prior, body_hash, check_key
from sesflow.ingest.pauses_api import PAUSES, add_pause_routes
from sesflow.ingest.templates import TemplateStore
from sesflow.ingest.templates_api import TEMPLATES, add_template_routes
from sesflow.ingest.validation import (
    Limits,
    ValidMessage,
    check_topic,
    in_message,
    parse_api_body,
    validate_all,
)

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
REDIS: web.AppKey[Any] = web.AppKey("redis")
CANCEL: web.AppKey[Any] = web.AppKey("cancel")
SUPPRESSIONS = web.AppKey("suppressions", SuppressionList)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)

MAX_SUPPRESSION_BODY = 64 * 1024
MAX_PAGE = 1000
MAX_REASON_CHARS = 64


def answer_for(valid: list[ValidMessage], ids: list[str] | None) -> dict[str, Any]:
    """The 202 body; `ids` None while they are not known yet (see ingest.idempotency)."""
    return {
        "count": sum(v.count for v in valid),
        "messages": [
            {
                "id": ids[n] if ids is not None else None,
                "topic_id": v.request.topic_id,
                "count": v.count,
                "scheduled_at": v.request.scheduled_at,
            }
            for n, v in enumerate(valid)
        ],
    }


async def post_messages(request: web.Request) -> web.Response:
    """Accept messages: 202 `{"count", "messages": [{"id", "topic_id", "count",
    "scheduled_at"}]}`. `count` is the recipients accepted (after dropping duplicates; suppressed
    addresses are dropped later by the dispatcher and counted as `suppressed`)."""
    app = request.app
    body = await read_body(request, app[SETTINGS].max_request_bytes)
    messages = parse_api_body(body, Limits.from_settings(app[SETTINGS]))
    key_header = request.headers.get("Idempotency-Key")
    if key_header is None:
        return json_response(await enqueue(app, await accept(app, messages)), status=202)

    store = app[IDEMPOTENCY]
    claim = await store.begin(app[KEYS].idempotency(check_key(key_header)), body_hash(body))
    if isinstance(claim, Prior):
        return replay(claim)
    try:
        async with store.keep_alive(claim):
            # Stored templates are read once the key is claimed: a retry of an accepted request
            # gets its answer again even when a template it names has changed or gone since.
            valid = await accept(app, messages)
            written = await store.commit(
                claim,
                app[KEYS].requests,
                REQUEST_FIELD,
                [encode(v.request) for v in valid],
                202,
                answer_for(valid, None),
            )
    except BaseException:
        # Shielded: even a cancelled handler frees the key when nothing was written.
        await asyncio.shield(release_quietly(store, claim))
        raise
    if isinstance(written, Prior):  # the key was lost to a retry, which enqueued instead
        return replay(written)
    answer = accepted(valid, written)
    await store.finish(claim, 202, answer)
    return json_response(answer, status=202)


async def accept(app: web.Application, messages: list[MessageRequest]) -> list[ValidMessage]:
    """Copy the stored templates the messages name into them (now: this is the moment they are
    accepted), then validate all of them strictly."""
    resolved = []
    for n, message in enumerate(messages):
        try:
            resolved.append(await app[TEMPLATES].resolve(message))
        except InputError as exc:
            raise in_message(n, exc) from exc
    return validate_all(resolved, Limits.from_settings(app[SETTINGS]))


def replay(prior: Prior) -> web.Response:
    return json_response(prior.answer, status=prior.status, headers={"Idempotent-Replayed": "true"})


async def enqueue(app: web.Application, valid: list[ValidMessage]) -> dict[str, Any]:
    """XADD every message in one transaction."""
    keys = app[KEYS]
    async with app[REDIS].pipeline(transaction=True) as pipe:
        for v in valid:
            pipe.xadd(keys.requests, entry_fields(v.request))
        results = await pipe.execute()
    return accepted(valid, [str(r) for r in results])


def accepted(valid: list[ValidMessage], ids: list[str]) -> dict[str, Any]:
    metrics.MESSAGES_ACCEPTED.inc(len(valid))
    metrics.RECIPIENTS_ACCEPTED.inc(sum(v.count for v in valid))
    return answer_for(valid, ids)


async def release_quietly(store: IdempotencyStore, claim: Claim) -> None:
    # When Redis is down the placeholder cannot be removed; it expires by itself.
    with contextlib.suppress(Exception):
        await store.release(claim)


async def requests_clock_ms(client: Redis, keys: Keys) -> int:
    """Redis TIME where `requests` lives: its clock stamps the message ids a stop time is
    compared with. On a cluster TIME would go to any node, whose clock may differ."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # learns the slot map; a no-op once it is known
        node = client.get_node_from_key(keys.requests)
        seconds, micros = await client.time(target_nodes=node)
    else:
        seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def delete_topic(request: web.Request) -> web.Response:
    """Cancel a topic: 200 `{"topic_id", "stopped", "stopped_at"}`.

    Writes the stop time (Redis TIME, the clock of message ids) into every partition and, per
    partition in one script, removes the topic's scheduled chunks; `stopped` counts those
    recipients. Jobs already queued on `sends` are stopped by the sender when it reaches them,
    and messages not dispatched yet by the dispatcher; both count as `stopped` then, in the
    topic's stats. Only messages accepted before the stop time are affected.

    A topic sesflow has not seen still gets 200 with `stopped: 0`, not 404: its messages may be
    on their way (written by a producer, or not yet counted by stats), and the stop recorded now
    will catch them. Repeating the call is harmless.
    """
    app = request.app
    topic = check_topic(request.match_info["topic_id"])
    client, keys = app[REDIS], app[KEYS]
    stop_ms = await requests_clock_ms(client, keys)
    ttl_ms = app[SETTINGS].content_ttl * 1000
    stopped = 0
    for p in keys.partitions:
        stopped += int(await app[CANCEL](keys=p.cancel_keys(topic), args=[stop_ms, topic, ttl_ms]))
    return json_response({"topic_id": topic, "stopped": stopped, "stopped_at": stop_ms})


# --- suppression list -------------------------------------------------------------------------


def path_email(request: web.Request) -> str:
    raw = request.match_info["email"]
    try:
        ascii_address(raw)
    except InvalidAddress as exc:
        raise InputError("invalid_address", f"{raw.strip()[:254]!r} {exc}") from exc
    return normalise(raw)


def scopes_view(item: Suppression | None, lists: dict[str, ListScope]) -> dict[str, Any]:
    """An address's scopes: `global` (its entry, or null) and `lists` (list -> its unsubscribe;
    "*" = every list)."""
    return {
        "global": msgspec.to_builtins(item) if item is not None else None,
        "lists": {name: msgspec.to_builtins(scope) for name, scope in sorted(lists.items())},
    }


def address_view(email: str, item: Suppression | None, lists: dict[str, ListScope]) -> Any:
    """The entry as before (email, reason, ts, detail, topic), plus `global` and `scopes`. An
    address that only left lists shows reason `unsubscribe` (what it showed before lists
    existed), with its latest list unsubscribe's time and topic."""
    if item is None:
        latest = max(lists.values(), key=lambda scope: scope.ts)
        names = ", ".join(sorted(lists))
        item = Suppression(
            email=email,
            reason="unsubscribe",
            ts=latest.ts,
            detail=f"unsubscribed from lists: {names}",
            topic=latest.topic,
        )
        shown: dict[str, Any] = msgspec.to_builtins(item)
        shown["global"] = False
    else:
        shown = msgspec.to_builtins(item)
        shown["global"] = True
    shown["scopes"] = scopes_view(None if not shown["global"] else item, lists)
    return shown


async def list_suppressions(request: web.Request) -> web.Response:
    """`{"items": [...], "next_cursor": str | null, "total"}`; pass `next_cursor` back as
    `cursor` until it is null. A page may hold a few more or fewer than `limit` (HSCAN).
    Default: the global list, each item with its `lists` (the lists the address also left).
    `?scope=lists`: the addresses that left lists, `{"email", "lists"}` each."""
    cursor = int_param(request.query.get("cursor"), "cursor", 0, 0, 2**63)
    limit = int_param(request.query.get("limit"), "limit", 100, 1, MAX_PAGE)
    scope = request.query.get("scope", "global")
    suppressions = request.app[SUPPRESSIONS]
    if scope == "lists":
        next_cursor, pairs = await suppressions.lists_page(cursor, limit)
        items: list[Any] = [
            {"email": email, "lists": scopes_view(None, lists)["lists"]} for email, lists in pairs
        ]
        total = await suppressions.lists_count()
    elif scope == "global":
        next_cursor, entries = await suppressions.page(cursor, limit)
        lists_of = await suppressions.scopes_of_many([e.email for e in entries])
        items = [
            {**msgspec.to_builtins(e), "lists": scopes_view(None, lists)["lists"]}
            for e, lists in zip(entries, lists_of, strict=True)
        ]
        total = await suppressions.count()
    else:
        raise InputError("invalid_scope", 'scope must be "global" or "lists"')
    return json_response(
        {
            "items": items,
            "next_cursor": str(next_cursor) if next_cursor else None,
            "total": total,
        }
    )


async def get_suppression(request: web.Request) -> web.Response:
    email = path_email(request)
    suppressions = request.app[SUPPRESSIONS]
    item = await suppressions.get(email)
    lists = await suppressions.lists_of(email)
    if item is None and not lists:
        raise InputError("not_found", f"{email} is not suppressed", status=404)
    return json_response(address_view(email, item, lists))


def query_list(request: web.Request) -> str | None:
    """`?list=NAME` (or `*`, every list): the one list scope a call is about."""
    raw = request.query.get("list")
    if raw is None:
        return None
    return ALL_LISTS if raw.strip() == ALL_LISTS else check_list(raw)


async def put_suppression(request: web.Request) -> web.Response:
    """Suppress by hand: globally (body `{"reason", "detail"}`, both optional), or from one list
    (`?list=NAME` or body `"list"`: the address left that list, as by its one-click link)."""
    email = path_email(request)
    body = await read_body(request, MAX_SUPPRESSION_BODY)
    reason, detail = "manual", ""
    list_name = query_list(request)
    if body.strip():
        data = decode_json(body, msgspec.json.decode)
        if not isinstance(data, dict):
            raise InputError("invalid_type", "body must be a JSON object")
        reason = data.get("reason", reason)
        detail = data.get("detail", detail)
        if not isinstance(reason, str) or not reason or len(reason) > MAX_REASON_CHARS:
            raise InputError("invalid_type", f"reason must be 1..{MAX_REASON_CHARS} characters")
        if not isinstance(detail, str):
            raise InputError("invalid_type", "detail must be a string")
        if data.get("list") is not None:
            if not isinstance(data["list"], str):
                raise InputError("invalid_type", "list must be a string")
            list_name = ALL_LISTS if data["list"] == ALL_LISTS else check_list(data["list"])
    suppressions = request.app[SUPPRESSIONS]
    if list_name is not None:
        await suppressions.unsubscribe(email, list_name, detail=detail[:1000])
        lists = await suppressions.lists_of(email)
        return json_response(address_view(email, await suppressions.get(email), lists))
    item = entry(email, reason, detail[:1000])
    settings = request.app[SETTINGS]
    if settings.ses_suppression_sync:
        await mirrored(mirror_put(settings, email, reason))
    await suppressions.put(item)
    return json_response(msgspec.to_builtins(item))


async def mirrored(call: Awaitable[Any]) -> Any:
    """A change copied to SES's list first: when SES refuses it, 502 and nothing changed."""
    try:
        return await call
    except SesMirrorError as exc:
        raise InputError(
            "ses_mirror_failed",
            f"{exc}; nothing was changed (SES_SUPPRESSION_SYNC is on): try again",
            status=502,
        ) from exc


async def delete_suppression(request: web.Request) -> web.Response:
    """Remove every scope of the address, or one: `?list=NAME` (one list's unsubscribe, `*`
    the every-list one) or `?scope=global` (the global entry only). 404 when it was not there.
    With SES_SUPPRESSION_SYNC, removing the global entry removes it from SES's list first."""
    email = path_email(request)
    suppressions = request.app[SUPPRESSIONS]
    list_name = query_list(request)
    scope = request.query.get("scope", "")
    if scope not in ("", "global", "lists"):
        raise InputError("invalid_scope", 'scope must be "global" or "lists"')
    if list_name is not None:
        if not await suppressions.resubscribe(email, list_name):
            raise InputError("not_found", f"{email} has not left list {list_name}", status=404)
        return json_response({"email": email, "removed": True, "scopes": [f"list:{list_name}"]})
    removed: list[str] = []
    settings = request.app[SETTINGS]
    if scope in ("", "global"):
        if settings.ses_suppression_sync and await suppressions.get(email) is not None:
            await mirrored(mirror_delete(settings, email))
        if await suppressions.remove(email):
            removed.append("global")
    if scope in ("", "lists"):
        removed += [f"list:{name}" for name in sorted(await suppressions.lists_of(email))]
        await suppressions.resubscribe(email)
    if not removed:
        raise InputError("not_found", f"{email} is not suppressed", status=404)
    return json_response({"email": email, "removed": True, "scopes": removed})


# --- the app ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> web.Application:
    role_metrics = metrics.role_metrics()
    app = web.Application(
        middlewares=[
            role_metrics.middleware,
            dashboard_cors(settings),
            errors_middleware,
            auth_middleware(settings, public=(*HEALTH_PATHS, "/metrics", *PUBLIC_PATHS)),
        ],
        client_max_size=settings.max_request_bytes,
    )
    app[SETTINGS] = settings
    app[KEYS] = Keys(settings.redis_prefix, settings.send_partitions)
    app.cleanup_ctx.append(redis_context)
    add_health_routes(app, lambda app: app[REDIS])
    app.router.add_get("/metrics", role_metrics.handler)
    app.router.add_post("/v1/messages", post_messages)
    app.router.add_delete("/v1/topics/{topic_id}", delete_topic)
    app.router.add_get("/v1/suppressions", list_suppressions)
    app.router.add_get("/v1/suppressions/{email}", get_suppression)
    app.router.add_put("/v1/suppressions/{email}", put_suppression)
    app.router.add_delete("/v1/suppressions/{email}", delete_suppression)
    add_template_routes(app, settings)
    add_pause_routes(app)
    add_compat_routes(app, settings)
    return app


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    # No command retries: redis-py would re-run the whole MULTI after a reply lost to a dropped
    # connection, enqueueing the messages twice. The HTTP client retries on 503 instead (with an
    # Idempotency-Key when it must not send twice).
    client = connect(app[SETTINGS], retry=Retry(NoBackoff(), 0))
    app[REDIS] = client
    app[CANCEL] = scripts.register(client, "cancel")
    app[SUPPRESSIONS] = SuppressionList(client, app[KEYS])
    app[IDEMPOTENCY] = IdempotencyStore(client, app[SETTINGS].idempotency_ttl)
    app[TEMPLATES] = TemplateStore(client, app[KEYS])
    app[PAUSES] = Pauses(client, app[KEYS])
    try:
        yield
    finally:
        await client.aclose()

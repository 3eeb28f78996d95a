"""A message's configuration set and tenant: allow-listed (SES_CONFIGURATION_SETS, SES_TENANTS),
the From checked against the tenant's identities (SES_TENANT_IDENTITIES); anything else is a
400 from the API and a dead letter from the dispatcher; what is allowed is stored with the
content for the sender."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from sesflow.common.connection import ensure_group
from sesflow.common.consumer import consumer_client
from sesflow.common.errors import ConfigError
from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.producer import enqueue
from sesflow.common.schema import MessageContent, MessageRequest
from sesflow.common.ses_setup import parse_tenant_identities
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.ingest.dispatcher import Dispatcher

from support.until import until

SETUP = {
    "EMAIL_SENDER": "noreply@main.example",
    "SES_CONFIGURATION_SET": "main",
    "SES_CONFIGURATION_SETS": "marketing, transactional-pool",
    "SES_TENANTS": "acme,globex,initech",
    "SES_TENANT_IDENTITIES": "acme:acme.com|ceo@boss.example,globex:globex.io",
}


def message(**fields: Any) -> dict[str, Any]:
    base = {"topic_id": "t", "subject": "Hi", "content": "<p>x</p>", "emails": ["a@x.io"]}
    return base | fields


@pytest.fixture
def setup_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**SETUP)


async def post(http: Any, *messages: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await http.post("/v1/messages", json={"messages": list(messages)})
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"configuration_set": "unknown"}, "invalid_configuration_set"),
        ({"configuration_set": 7}, "invalid_type"),
        ({"tenant": "umbrella"}, "invalid_tenant"),
        ({"tenant": ["acme"]}, "invalid_type"),
        ({"tenant": "acme", "from_email": "x@evil.example"}, "tenant_identity"),
        ({"tenant": "acme", "from_email": "x@news.acme.com"}, "tenant_identity"),  # a subdomain
        ({"tenant": "globex"}, "tenant_identity"),  # EMAIL_SENDER is not globex's
    ],
)
async def test_a_setup_outside_the_allow_lists_is_a_400_and_nothing_is_written(
    api_client: Any, setup_settings: Settings, redis: Any, keys: Keys, fields: Any, error: str
) -> None:
    async with api_client(setup_settings) as http:
        status, answer = await post(http, message(), message(**fields))
    assert (status, answer["error"]) == (400, error), answer
    assert answer["detail"].startswith("messages[1]")
    assert await redis.xlen(keys.requests) == 0


async def test_allowed_setups_are_accepted_and_kept_with_the_message(
    api_client: Any, setup_settings: Settings, redis: Any, keys: Keys
) -> None:
    allowed = [
        {},
        {"configuration_set": "main"},  # the default is always allowed
        {"configurationSet": "marketing", "tenant": "acme", "from_email": "News <n@acme.com>"},
        {"tenant": "acme", "from_email": "ceo@boss.example"},
        {"tenant": "initech", "from_email": "any@where.example"},  # no identities listed
    ]
    async with api_client(setup_settings) as http:
        status, answer = await post(http, *(message(**fields) for fields in allowed))
    assert status == 202, answer
    stored = [msgspec.json.decode(f["message"]) for _, f in await redis.xrange(keys.requests)]
    named = [(m.get("configuration_set"), m.get("tenant")) for m in stored]
    assert named == [
        (None, None),
        ("main", None),
        ("marketing", "acme"),
        (None, "acme"),
        (None, "initech"),
    ]


async def test_without_allow_lists_only_the_default_set_may_be_named(
    api_client: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SES_CONFIGURATION_SET="main")
    async with api_client(settings) as http:
        assert (await post(http, message(configuration_set="main")))[0] == 202
        status, answer = await post(http, message(configuration_set="other"))
        assert (status, answer["error"]) == (400, "invalid_configuration_set")
        status, answer = await post(http, message(tenant="acme"))
        assert (status, answer["error"]) == (400, "invalid_tenant")


async def test_the_dispatcher_dead_letters_a_refused_setup_and_stores_an_allowed_one(
    make_settings: Callable[..., Settings], redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    settings = make_settings(**SETUP)
    client = consumer_client(settings)
    await ensure_group(client, keys.requests, DISPATCH_GROUP)
    base = MessageRequest(topic_id="t", subject="s", content="<p>c</p>", emails=["a@x.io"])
    bad = await enqueue(redis, keys, replaced(base, tenant="umbrella"))
    stranger = await enqueue(
        redis, keys, replaced(base, tenant="acme", from_email="x@evil.example")
    )
    good = await enqueue(
        redis,
        keys,
        replaced(base, configuration_set="marketing", tenant="globex", from_email="a@globex.io"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(client, settings, keys, consumer="t").run(stop))
    try:
        await until(lambda: dead_count(redis, keys), lambda n: n == 2, what="2 dead letters")
        await until(lambda: redis.exists(p.message(good)), what="the good message stored")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()
    dead = {f["id"]: f["reason"] for _, f in await redis.xrange(keys.requests_dead)}
    assert dead == {bad: "invalid_tenant", stranger: "tenant_identity"}
    content = MessageContent.from_hash(good, await redis.hgetall(p.message(good)))
    assert (content.configuration_set, content.tenant) == ("marketing", "globex")


def replaced(message: MessageRequest, **changes: Any) -> MessageRequest:
    return msgspec.structs.replace(message, **changes)


async def dead_count(redis: Any, keys: Keys) -> int:
    return int(await redis.xlen(keys.requests_dead))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"SES_CONFIGURATION_SETS": "ok,not ok"}, "SES_CONFIGURATION_SETS"),
        ({"SES_TENANTS": "a" * 65}, "SES_TENANTS"),
        ({"SES_TENANTS": "acme", "SES_TENANT_IDENTITIES": "acme"}, "tenant:identity"),
        ({"SES_TENANTS": "acme", "SES_TENANT_IDENTITIES": "acme:a.io,acme:b.io"}, "twice"),
        ({"SES_TENANTS": "acme", "SES_TENANT_IDENTITIES": "globex:g.io"}, "does not list"),
    ],
)
def test_malformed_setup_settings_stop_the_process(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        settings_from_mapping({"TRACKING_SECRET": "test-tracking-secret", **env})


def test_tenant_identities_are_read_case_insensitively() -> None:
    parsed = parse_tenant_identities(" acme : Acme.COM | ceo@Boss.example , globex:globex.io ")
    assert parsed == {
        "acme": frozenset({"acme.com", "ceo@boss.example"}),
        "globex": frozenset({"globex.io"}),
    }

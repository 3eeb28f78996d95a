"""Stored templates: the API (PUT / GET / DELETE / list, versions, auth) and their resolution at
accept time, against a real redis-server."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.producer import enqueue
from sesflow.common.schema import Job, MessageContent, MessageRequest, decode_request
from sesflow.ingest.dispatcher import Dispatcher

from support.ingestkit import dispatch_all, read_jobs

TEMPLATE_API_KEY = "templates-test-key-7f3a9c2e5b"
WELCOME = {
    "subject": "Welcome {{first_name}}",
    "html": "<p>Hello {{first_name}}, your plan is {{plan}}.</p>",
    "text": "Hello {{first_name}}, plan {{plan}}.",
    "data": {"plan": "free"},
}


def using(template: str, **extra: Any) -> dict[str, Any]:
    message = {
        "topic_id": "welcome",
        "template": template,
        "recipients": [{"email": "ada@example.com", "data": {"first_name": "Ada"}}],
    }
    message.update(extra)
    return {"messages": [message]}


async def test_put_get_list_delete(http: Any) -> None:
    resp = await http.put("/v1/templates/welcome", json=WELCOME)
    assert resp.status == 201
    assert await resp.json() == {"name": "welcome", "version": 1, **WELCOME}
    resp = await http.put("/v1/templates/welcome", json={**WELCOME, "subject": "Hi {{x}}"})
    assert resp.status == 200 and (await resp.json())["version"] == 2
    await http.put("/v1/templates/a-first.one", json={"subject": "S", "content": "<p>c</p>"})

    resp = await http.get("/v1/templates/welcome")
    current = await resp.json()
    assert resp.status == 200 and current["version"] == 2 and current["subject"] == "Hi {{x}}"
    assert current["updated_ms"] > 0 and current["html"] == WELCOME["html"]
    old = await (await http.get("/v1/templates/welcome?version=1")).json()
    assert old["subject"] == WELCOME["subject"] and old["version"] == 1

    listed = (await (await http.get("/v1/templates")).json())["items"]
    assert [(t["name"], t["version"]) for t in listed] == [("a-first.one", 1), ("welcome", 2)]

    resp = await http.delete("/v1/templates/welcome")
    assert resp.status == 200 and await resp.json() == {"name": "welcome", "deleted": True}
    for resp in (
        await http.get("/v1/templates/welcome"),
        await http.delete("/v1/templates/welcome"),
        await http.get("/v1/templates/a-first.one?version=7"),
    ):
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    # a new template of the same name starts again
    resp = await http.put("/v1/templates/welcome", json=WELCOME)
    assert resp.status == 201 and (await resp.json())["version"] == 1


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/v1/templates/welcome", {"html": "<p>x</p>"}, "invalid_type"),
        ("/v1/templates/welcome", {"subject": "S"}, "invalid_type"),
        ("/v1/templates/welcome", {"subject": "", "html": "<p>x</p>"}, "invalid_subject"),
        ("/v1/templates/welcome", {"subject": "a\r\nb", "html": "x"}, "invalid_subject"),
        ("/v1/templates/welcome", {"subject": "S", "html": " "}, "invalid_content"),
        ("/v1/templates/welcome", {"subject": "S", "html": "x", "text": 3}, "invalid_type"),
        (
            "/v1/templates/welcome",
            {"subject": "S", "html": "x", "data": {"a": None}},
            "invalid_data",
        ),
        ("/v1/templates/welcome", {"subject": "S", "html": "x", "data": []}, "invalid_data"),
        ("/v1/templates/welcome", {"subject": "S", "html": "x", "extra": 1}, "invalid_type"),
        ("/v1/templates/welcome", {"subject": "{{sesflow_x}}", "html": "x"}, "reserved_name"),
        ("/v1/templates/welcome", [1], "invalid_type"),
        ("/v1/templates/-bad", {"subject": "S", "html": "x"}, "invalid_template_name"),
        (f"/v1/templates/{'x' * 65}", {"subject": "S", "html": "x"}, "invalid_template_name"),
    ],
)
async def test_invalid_templates_get_a_400(http: Any, path: str, body: Any, error: str) -> None:
    resp = await http.put(path, json=body)
    assert resp.status == 400
    assert (await resp.json())["error"] == error


async def test_invalid_json_and_bad_versions_get_a_400(http: Any) -> None:
    resp = await http.put("/v1/templates/w", data=b"{not json")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    for body in (b'{"subject": "\xff"}', b"[" * 100_000 + b"]" * 100_000):
        resp = await http.put("/v1/templates/w", data=body)
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    for version in ("0", "-1", "²", "1" * 5000, "1.0"):
        resp = await http.get("/v1/templates/w", params={"version": version})
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_parameter"


async def test_template_routes_need_credentials(api_client: Any, make_settings: Any) -> None:
    async with api_client(make_settings(API_KEY=TEMPLATE_API_KEY)) as http:
        for method in ("get", "put", "delete"):
            resp = await getattr(http, method)("/v1/templates/w", json=WELCOME)
            assert resp.status == 401
        assert (await http.get("/v1/templates")).status == 401
        ok = await http.put(
            "/v1/templates/w", json=WELCOME, headers={"x-api-key": TEMPLATE_API_KEY}
        )
        assert ok.status == 201


async def test_a_stored_template_edited_after_accept_leaves_the_accepted_mail_unchanged(
    http: Any, dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await http.put("/v1/templates/welcome", json=WELCOME)
    resp = await http.post("/v1/messages", json=using("welcome", data={"plan": "pro"}))
    assert resp.status == 202, await resp.text()
    msg_id = (await resp.json())["messages"][0]["id"]
    # Edited (then deleted) after the message was accepted, before it is dispatched.
    edited = {"subject": "Changed", "html": "<p>Changed {{other}}</p>"}
    assert (await http.put("/v1/templates/welcome", json=edited)).status == 200
    assert (await http.delete("/v1/templates/welcome")).status == 200

    [(_, fields)] = await redis.xrange(keys.requests)
    entry = decode_request(fields["message"])
    assert entry.template is None and entry.subject == WELCOME["subject"]
    await dispatch_all(dispatcher)
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert (content.subject, content.html, content.text) == (
        WELCOME["subject"],
        WELCOME["html"],
        WELCOME["text"],
    )
    # the message's data over the template's
    assert json.loads(content.data) == {"plan": "pro"}
    [job] = [Job.from_fields(f) for f in await read_jobs(redis, p)]
    assert (job.email, json.loads(job.data)) == ("ada@example.com", {"first_name": "Ada"})


async def test_a_template_is_checked_against_the_message_recipients(
    http: Any, redis: Any, keys: Keys
) -> None:
    await http.put("/v1/templates/welcome", json=WELCOME)
    message = using("welcome")
    message["messages"][0]["recipients"] = [{"email": "a@x.io"}]
    resp = await http.post("/v1/messages", json=message)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "missing_data" and "{{first_name}}" in answer["detail"]
    resp = await http.post("/v1/messages", json=using("nope"))
    assert resp.status == 400
    assert (await resp.json())["error"] == "unknown_template"
    assert await redis.xlen(keys.requests) == 0


async def test_a_producer_naming_a_template_gets_its_version_at_dispatch(
    http: Any, dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await http.put("/v1/templates/welcome", json=WELCOME)
    message = MessageRequest(topic_id="t", emails=["a@x.io"], template="welcome")
    msg_id = await enqueue(redis, keys, msgspec.structs.replace(message, data={"first_name": "A"}))
    await dispatch_all(dispatcher)
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert content.subject == WELCOME["subject"]
    assert json.loads(content.data) == {"plan": "free", "first_name": "A"}
    assert len(await read_jobs(redis, p)) == 1


async def test_a_redelivered_template_entry_keeps_the_content_it_started_with(
    http: Any, dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    """Chunk 0 stored the content, then the dispatcher died; meanwhile the template changed.
    The rest of the recipients must get the same mail as the first chunk."""
    from sesflow.ingest import dispatcher as dispatcher_module

    await http.put("/v1/templates/welcome", json=WELCOME)
    emails = [f"u{n}@x.io" for n in range(5)]
    message = MessageRequest(
        topic_id="t", emails=emails, template="welcome", data={"first_name": "you"}
    )
    msg_id = await enqueue(redis, keys, message)
    reply = await dispatcher.client.xreadgroup(
        DISPATCH_GROUP, "test", {keys.requests: ">"}, count=1
    )
    entry_id, fields = reply[0][1][0]
    original_chunk = dispatcher_module.CHUNK
    dispatcher_module.CHUNK = 2
    try:
        valid = await dispatcher.validate(entry_id, fields)
        # only the first chunk goes through before the "crash"
        marker, _ = await dispatcher.script(
            keys=p.dispatch_keys(msg_id, "t"),
            args=first_chunk_args(msg_id, valid),
        )
        assert int(marker) == 2
        await http.put("/v1/templates/welcome", json={"subject": "New", "html": "<p>new</p>"})
        await dispatcher.handle(entry_id, fields)
    finally:
        dispatcher_module.CHUNK = original_chunk
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert content.subject == WELCOME["subject"] and content.total == 5
    assert [Job.from_fields(f).email for f in await read_jobs(redis, p)] == emails


def first_chunk_args(msg_id: str, valid: Any) -> list[Any]:
    from sesflow.ingest.dispatcher import SCHEDULE_CHUNK, content_of

    pairs = [part for pair in content_of(msg_id, valid).to_hash().items() for part in pair]
    recipients = [
        part for pair in zip(valid.emails[:2], valid.own_data[:2], strict=True) for part in pair
    ]
    return [
        msg_id,
        0,
        0,
        3_600_000,
        "t",
        len(valid.emails),
        0,
        "",
        SCHEDULE_CHUNK,
        len(pairs) // 2,
        *pairs,
        *recipients,
    ]


async def test_a_retry_with_the_same_key_replays_even_after_the_template_is_gone(
    http: Any, redis: Any, keys: Keys
) -> None:
    await http.put("/v1/templates/welcome", json=WELCOME)
    body = using("welcome")
    headers = {"Idempotency-Key": "campaign-1"}
    first = await http.post("/v1/messages", json=body, headers=headers)
    assert first.status == 202
    await http.delete("/v1/templates/welcome")
    again = await http.post("/v1/messages", json=body, headers=headers)
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    assert await redis.xlen(keys.requests) == 1
    # a new key meets the missing template, and frees the key it claimed
    other = {"Idempotency-Key": "campaign-2"}
    refused = await http.post("/v1/messages", json=body, headers=other)
    assert refused.status == 400 and (await refused.json())["error"] == "unknown_template"
    await http.put("/v1/templates/welcome", json=WELCOME)
    assert (await http.post("/v1/messages", json=body, headers=other)).status == 202

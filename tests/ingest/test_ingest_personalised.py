"""Personalised messages through ingest against a real redis-server: the API accepts or refuses
them, the dispatcher stores the content once and carries each recipient's own data on their
job (field `d`), through the schedule too; producers' entries are validated and dead-lettered."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.producer import enqueue
from sesflow.common.schema import Job, MessageContent, MessageRequest, Recipient
from sesflow.common.settings import Settings
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.ingest.scheduler import Scheduler

from support.ingestkit import dispatch_all, queued, read_events, read_jobs
from support.until import until

PDF = base64.b64encode(b"%PDF-1.4 " + bytes(range(256))).decode()
CAMPAIGN = {
    "topic_id": "spring",
    "subject": "Hi {{first_name}}, spring is here",
    "content": "<p>Hello {{first_name}}, your code is <b>{{code}}</b>.</p>",
    "data": {"first_name": "there"},
    "recipients": [
        {"email": "ada@example.com", "data": {"first_name": "Ada", "code": "<A1>"}},
        {"email": "alan@example.com", "data": {"code": "B2"}},
    ],
    "emails": ["ada@example.com"],
    "reply_to": ["help@example.com"],
    "headers": {"X-Campaign": "spring"},
    "attachments": [{"filename": "a.pdf", "content_type": "application/pdf", "content": PDF}],
}


async def test_a_personalised_message_is_stored_once_and_each_job_carries_its_data(
    http: Any, dispatcher: Dispatcher, redis: Any, p: PartitionKeys
) -> None:
    resp = await http.post("/v1/messages", json={"messages": [CAMPAIGN]})
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["count"] == 2  # ada listed twice: once
    msg_id = answer["messages"][0]["id"]
    assert await dispatch_all(dispatcher) == 1

    jobs = [Job.from_fields(fields) for fields in await read_jobs(redis, p)]
    assert [(j.msg_id, j.index, j.email) for j in jobs] == [
        (msg_id, 0, "ada@example.com"),
        (msg_id, 1, "alan@example.com"),
    ]
    assert [json.loads(j.data) for j in jobs] == [
        {"first_name": "Ada", "code": "<A1>"},
        {"code": "B2"},
    ]
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert content.subject == CAMPAIGN["subject"] and content.html == CAMPAIGN["content"]
    assert content.text == "Hello {{first_name}}, your code is {{code}}.\n"
    assert json.loads(content.data) == {"first_name": "there"}
    assert content.reply_to == ("help@example.com",)
    assert content.headers == (("X-Campaign", "spring"),)
    assert json.loads(content.attachments) == [
        {"filename": "a.pdf", "content": PDF, "content_type": "application/pdf"}
    ]
    assert content.total == 2
    # the attachment is in the content hash only, never on a job
    assert all(PDF not in json.dumps(fields) for fields in await read_jobs(redis, p))


async def test_an_older_services_message_queues_jobs_without_data(
    http: Any, dispatcher: Dispatcher, redis: Any, p: PartitionKeys
) -> None:
    body = {"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": "S", "content": "C"}]}
    assert (await http.post("/v1/messages", json=body)).status == 202
    await dispatch_all(dispatcher)
    [job] = await read_jobs(redis, p)
    assert set(job) == {"m", "i", "e"}


async def test_missing_data_gets_a_400_that_lists_it_and_nothing_is_written(
    http: Any, redis: Any, keys: Keys
) -> None:
    message = {**CAMPAIGN, "subject": "Hi {{first_name}} {{last_name}}"}
    resp = await http.post("/v1/messages", json={"messages": [message]})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "missing_data"
    assert answer["detail"].startswith("messages[0]: {{last_name}} resolves for no recipient")
    assert answer["missing"] == [
        {
            "placeholder": "last_name",
            "missing_for": 2,
            "recipients": ["ada@example.com", "alan@example.com"],
        }
    ]
    assert await redis.xlen(keys.requests) == 0


async def test_an_attachment_over_the_size_limit_gets_413(
    api_client: Any, make_settings: Any, redis: Any, keys: Keys
) -> None:
    async with api_client(make_settings(MAX_MESSAGE_BYTES=100_000)) as http:
        big = base64.b64encode(b"x" * 90_000).decode()
        message = {**CAMPAIGN, "attachments": [{"filename": "big.pdf", "content": big}]}
        resp = await http.post("/v1/messages", json={"messages": [message]})
        assert resp.status == 413
        answer = await resp.json()
        assert answer["error"] == "message_too_large" and "MAX_MESSAGE_BYTES" in answer["detail"]
        assert await redis.xlen(keys.requests) == 0


async def test_the_default_body_limit_lets_a_message_of_the_ses_limit_in() -> None:
    defaults = Settings()
    assert defaults.max_message_bytes == 40 * 1024 * 1024
    # base64 of the attachments plus the JSON around them (subject, HTML, addresses)
    assert defaults.max_request_bytes >= defaults.max_message_bytes + 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"data": {"first_name": None}}, "invalid_data"),
        ({"headers": {"List-Unsubscribe": "<x>"}}, "invalid_header"),
        ({"headers": {"X-A": "b\r\nBcc: c@x.io"}}, "invalid_header"),
        ({"reply_to": ["nope"]}, "invalid_reply_to"),
        ({"attachments": [{"filename": "x.exe", "content": PDF}]}, "invalid_attachment"),
        ({"attachments": [{"filename": "x.pdf", "content": "%%%"}]}, "invalid_attachment"),
        ({"template": "welcome"}, "template_conflict"),
    ],
)
async def test_bad_new_fields_get_a_400_json_error(
    http: Any, redis: Any, keys: Keys, change: dict[str, Any], error: str
) -> None:
    resp = await http.post("/v1/messages", json={"messages": [{**CAMPAIGN, **change}]})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == error and answer["detail"]
    assert await redis.xlen(keys.requests) == 0


# --- the producer path: the dispatcher validates and dead-letters ------------------------------


async def test_a_producers_personalised_entry_is_dispatched(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    message = MessageRequest(
        topic_id="t",
        subject="Hi {{name}}",
        content="<p>{{name}}</p>",
        recipients=[
            Recipient(email="a@x.io", data={"name": "A"}),
            Recipient(email="bad-address", data={"name": "B"}),
        ],
        emails=["c@x.io"],
        data={"name": "you"},
    )
    msg_id = await enqueue(redis, keys, message)
    await dispatch_all(dispatcher)
    jobs = [Job.from_fields(f) for f in await read_jobs(redis, p)]
    assert [(j.index, j.email, j.data) for j in jobs] == [
        (0, "a@x.io", '{"name":"A"}'),
        (1, "c@x.io", ""),
    ]
    events = await read_events(redis, p)
    assert [(e.type, e.n) for e in events] == [("accepted", 2), ("rejected", 1)]
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert content.text == "{{name}}\n"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            {"topic_id": "t", "emails": ["a@x.io"], "subject": "Hi {{who}}", "content": "c"},
            "missing_data",
        ),
        (
            {
                "topic_id": "t",
                "recipients": [{"email": "a@x.io", "data": {"x": [1]}}],
                "subject": "S",
                "content": "c",
            },
            "invalid_data",
        ),
        (
            {
                "topic_id": "t",
                "emails": ["a@x.io"],
                "subject": "S",
                "content": "c",
                "headers": {"From": "x@y.io"},
            },
            "invalid_header",
        ),
        (
            {
                "topic_id": "t",
                "emails": ["a@x.io"],
                "subject": "S",
                "content": "c",
                "attachments": [{"filename": "a.bat", "content": PDF}],
            },
            "invalid_attachment",
        ),
        ({"topic_id": "t", "emails": ["a@x.io"], "template": "nope"}, "unknown_template"),
        ({"topic_id": "t", "emails": ["a@x.io"], "recipients": "x"}, "invalid_type"),
    ],
)
async def test_an_invalid_producer_entry_is_dead_lettered_with_the_reason(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys, entry: Any, reason: str
) -> None:
    entry_id = await redis.xadd(keys.requests, {"message": json.dumps(entry)})
    await dispatch_all(dispatcher)
    [(_, dead)] = await redis.xrange(keys.requests_dead)
    assert (dead["id"], dead["reason"]) == (entry_id, reason)
    assert await queued(redis, p) == 0
    [event] = await read_events(redis, p)
    assert event.type == "rejected" and event.n == 1


async def test_a_scheduled_personalised_message_is_promoted_with_its_data_intact(
    http: Any, dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    tricky = {"note": 'tab\there, line\nbreak, quote " and é', "n": 1.5, "ok": True}
    recipients = [{"email": f"u{n}@x.io", "data": {"n": n}} for n in range(700)]
    recipients[3] = {"email": "u3@x.io", "data": tricky}
    due = time.time() + 1.0
    body = {
        "messages": [
            {
                "topic_id": "later",
                "subject": "S {{n}}",
                "content": "C",
                "recipients": recipients,
                "emails": ["plain@x.io"],
                "data": {"n": 0, "note": "", "ok": False},
                "scheduled_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(due))
                + f".{int(due % 1 * 1000):03d}Z",
            }
        ]
    }
    resp = await http.post("/v1/messages", json=body)
    assert resp.status == 202, await resp.text()
    await dispatch_all(dispatcher)
    assert await queued(redis, p) == 0
    assert await redis.zcard(p.schedule) == 2  # 701 recipients, 500 per chunk

    scheduler = Scheduler(redis, keys)

    async def promoted() -> int:
        await scheduler.tick()
        return await queued(redis, p)

    await until(promoted, lambda n: n >= 701, what="both chunks promoted", within=5)
    jobs = [Job.from_fields(f) for f in await read_jobs(redis, p)]
    assert [j.index for j in jobs] == list(range(701))
    assert [json.loads(j.data) for j in jobs[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert json.loads(jobs[3].data) == tricky
    assert (jobs[700].email, jobs[700].data) == ("plain@x.io", "")

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
import redis as syncredis

from sesflow.common.keys import DISPATCH_GROUP, SENDERS_GROUP, Keys
from sesflow.common.schema import (
    Event,
    EventType,
    MessageRequest,
    Recipient,
    decode_event,
    encode,
    event_fields,
)
from sesflow.sender.state import dead_entry
from sesflow.stats.counters import PartitionBatch

from support.clikit import Sesflow

KEYS = Keys()
P = KEYS.partition(0)
MSG = "1718000000000-0"


@pytest.fixture
def r(redis_url: str) -> Any:
    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def failed_job(r: Any, index: int = 0, state: str = "f") -> str:
    """A job the sender gave up on, as it leaves it: content, final state (a byte of the final
    string; a longer text is a state hash field, as older versions wrote), dead letter."""
    r.hset(P.message(MSG), mapping={"topic": "june", "subject": "S", "html": "<p>x</p>"})
    if len(state) == 1:
        r.setrange(P.finals(MSG), index, state)
    else:
        r.hset(P.state(MSG), str(index), state)
    fields = {"m": MSG, "i": str(index), "e": f"r{index}@example.com"}
    return str(r.xadd(P.sends_dead, dead_entry("1718000000001-0", fields, "max_attempts")))


def dead_request(r: Any, message: str, reason: str = "internal") -> str:
    entry = {"message": message, "reason": reason, "detail": "boom", "id": "1-0"}
    return str(r.xadd(KEYS.requests_dead, entry))


def valid_message() -> str:
    request = MessageRequest(topic_id="june", emails=["a@example.com"], subject="S", content="x")
    return encode(request).decode()


def test_list_and_show(sesflow: Sesflow, r: Any) -> None:
    job_id = failed_job(r, state="f:max_attempts")  # as an older version wrote it
    request_id = dead_request(r, "{not json", "invalid_json")
    event = {"e": '{"type": "bogus"}', "id": "5-0", "reason": "unknown event type 'bogus'"}
    event_id = str(r.xadd(P.events_dead, event))

    res = sesflow("dlq", "list")
    assert res.code == 0, res.err
    for entry_id in (job_id, request_id, event_id):
        assert entry_id in res.out
    assert "r0@example.com" in res.out and "invalid_json: boom" in res.out
    assert "requests: 1  sends/0: 1  events/0: 1" in res.out

    data = json.loads(sesflow("dlq", "list", "--stream", "sends", "--json").out)
    assert data["sizes"] == {"sends/0": 1}
    assert [e["id"] for e in data["entries"]] == [job_id]

    res = sesflow("dlq", "show", job_id)
    assert res.code == 0 and "f:max_attempts" in res.out and "source_id" in res.out
    (shown,) = json.loads(sesflow("dlq", "show", job_id, "--stream", "sends", "--json").out)
    assert shown["state"] == "f:max_attempts" and shown["fields"]["e"] == "r0@example.com"

    missing = sesflow("dlq", "show", "1-1")
    assert missing.code == 1 and "no dead letter 1-1" in missing.err
    assert sesflow("dlq", "show", "nonsense").code == 2


@pytest.mark.parametrize("state", ["f", "f:max_attempts"])  # now, and as older versions wrote it
def test_replaying_a_failed_job_makes_it_pending_again(
    sesflow: Sesflow, r: Any, state: str
) -> None:
    r.xgroup_create(P.sends, SENDERS_GROUP, id="0", mkstream=True)
    dead_id = failed_job(r, state=state)
    res = sesflow("dlq", "replay", dead_id)
    assert res.code == 0, res.out + res.err
    assert "1 replayed, 0 skipped" in res.out and "new entry" in res.out

    # the sender may claim it again
    assert r.hget(P.state(MSG), "0") is None and r.getrange(P.finals(MSG), 0, 0) in ("", "\0")
    assert r.xlen(P.sends_dead) == 0
    ((_, job),) = r.xrange(P.sends)
    assert job == {"m": MSG, "i": "0", "e": "r0@example.com"}
    ((_, fields),) = r.xrange(P.events)
    event = decode_event(fields["e"])
    assert (event.type, event.topic, event.msg_id, event.index, event.n) == (
        "requeued",
        "june",
        MSG,
        0,
        1,
    )

    # Stats: the failure counted earlier is taken back; the time buckets keep it where it was.
    batch = PartitionBatch()
    failed = Event(type="failed", topic="june", msg_id=MSG, index=0, ts=event.ts)
    batch.add("1-0", {k: v.decode() for k, v in event_fields(failed).items()})
    batch.add("1-1", fields)
    assert batch.topics["june"]["failed"] == 0 and batch.topics["june"]["requeued"] == 1
    assert batch.global_["failed"] == 0
    assert batch.minutely[f"failed:{event.ts // 60_000}"] == 1


def test_replay_never_resends_a_recipient_in_another_final_state(sesflow: Sesflow, r: Any) -> None:
    dead_id = failed_job(r, state="s:ses-message-id")
    res = sesflow("dlq", "replay", dead_id, "--force")
    assert res.code == 1
    assert "already sent: not sent again" in res.out
    assert r.xlen(P.sends_dead) == 1 and not r.exists(P.sends)


def test_replay_skips_jobs_whose_content_or_state_expired(sesflow: Sesflow, r: Any) -> None:
    dead_id = failed_job(r)
    r.delete(P.finals(MSG))
    res = sesflow("dlq", "replay", dead_id)
    assert res.code == 1 and "state has expired" in res.out
    res = sesflow("dlq", "replay", dead_id, "--force")
    assert res.code == 0 and "counts not corrected" in res.out
    assert r.xlen(P.sends) == 1 and not r.exists(P.events)

    dead_id = failed_job(r, index=1)
    r.delete(P.message(MSG))
    res = sesflow("dlq", "replay", "--all", "--stream", "sends")
    assert res.code == 1 and "content has expired" in res.out


def test_replay_requests_and_events(sesflow: Sesflow, r: Any) -> None:
    good = dead_request(r, valid_message())
    bad = dead_request(r, "{not json", "invalid_json")
    ok_event = encode(Event(type=EventType.SENT, topic="june")).decode()
    r.xadd(P.events_dead, {"e": ok_event, "id": "7-0", "reason": "redis hiccup"})
    r.xadd(P.events_dead, {"e": '{"type": "bogus"}', "id": "8-0", "reason": "unknown type"})

    res = sesflow("dlq", "replay", "--all")
    assert res.code == 1, res.out  # the bad request and the bogus event are skipped
    assert "2 replayed, 2 skipped" in res.out
    assert "still undecodable" in res.out and "still malformed" in res.out
    ((_, request),) = r.xrange(KEYS.requests)
    assert request == {"message": valid_message()}
    ((_, event),) = r.xrange(P.events)
    assert event == {"e": ok_event}
    assert [e[0] for e in r.xrange(KEYS.requests_dead)] == [bad]
    assert good in res.out

    res = sesflow("dlq", "replay", bad, "--force")
    assert res.code == 0 and r.xlen(KEYS.requests) == 2 and r.xlen(KEYS.requests_dead) == 0


def test_a_message_naming_a_template_can_be_replayed(sesflow: Sesflow, r: Any) -> None:
    """Dead-lettered as unknown_template: once the template exists, replay puts it back (the
    dispatcher reads the template then); its other fields are still checked."""
    personal = MessageRequest(
        topic_id="june",
        recipients=[Recipient(email="a@example.com", data={"n": 1})],
        template="welcome",
    )
    good = dead_request(r, encode(personal).decode(), "unknown_template")
    bad_data = msgspec.structs.replace(personal, data={"x": None})
    bad = dead_request(r, encode(bad_data).decode(), "invalid_data")
    res = sesflow("dlq", "replay", "--all", "--stream", "requests")
    assert "1 replayed, 1 skipped" in res.out, res.out + res.err
    assert "still invalid: invalid_data" in res.out
    assert [e[0] for e in r.xrange(KEYS.requests_dead)] == [bad]
    ((_, request),) = r.xrange(KEYS.requests)
    assert request == {"message": encode(personal).decode()}
    listed = sesflow("dlq", "list", "--stream", "requests")
    assert "topic 'june', 1 recipient(s)" in listed.out and good not in listed.out


def test_replay_needs_ids_or_all(sesflow: Sesflow, r: Any) -> None:
    assert sesflow("dlq", "replay").code == 2
    assert sesflow("dlq", "replay", "1-0", "--all").code == 2
    res = sesflow("dlq", "replay", "1-0")
    assert res.code == 1 and "not found" in res.out


def test_purge_is_a_dry_run_without_yes(sesflow: Sesflow, r: Any) -> None:
    r.xgroup_create(KEYS.requests, DISPATCH_GROUP, id="0", mkstream=True)
    old = int(time.time() * 1000) - 3 * 86_400_000
    r.xadd(KEYS.requests_dead, {"message": "{}", "reason": "x"}, id=f"{old}-0")
    r.xadd(KEYS.requests_dead, {"message": "{}", "reason": "x"})
    r.xadd(P.events_dead, {"e": "{}", "reason": "x"})

    res = sesflow("dlq", "purge", "--before", "2d")
    assert res.code == 0 and "would purge 1 dead letter(s)" in res.out and "--yes" in res.out
    assert r.xlen(KEYS.requests_dead) == 2

    res = sesflow("dlq", "purge", "--before", "2d", "--yes")
    assert "purged 1 dead letter(s)" in res.out and r.xlen(KEYS.requests_dead) == 1

    res = sesflow("dlq", "purge", "--stream", "events", "--yes")
    assert "purged 1" in res.out and r.xlen(P.events_dead) == 0 and r.xlen(KEYS.requests_dead) == 1
    assert sesflow("dlq", "purge", "--before", "soon").code == 2


def test_replaying_a_webhook_delivery_says_it_is_queued_again(sesflow: Sesflow, r: Any) -> None:
    """A webhook dead letter goes back on the delivery queue: no new stream entry to name."""
    r.hset(KEYS.webhook_endpoints, "ep_1", '{"id": "ep_1"}')
    letter = {
        "endpoint": "ep_1",
        "webhook_id": "msg_0_1718000000000-0",
        "type": "sent",
        "body": "{}",
        "first_ms": "1718000000000",
        "attempts": "9",
        "last_error": "HTTP 503",
        "id": "001718000000000-000000.ep_1",
        "reason": "failed for WEBHOOK_RETRY_FOR",
        "failed_at_ms": "1718086400000",
    }
    r.xadd(P.webhooks_dead, letter)
    res = sesflow("dlq", "replay", "--all", "--stream", "webhooks")
    assert res.code == 0, res.out + res.err
    assert "1 replayed, 0 skipped" in res.out
    assert "queued again" in res.out and "new entry" not in res.out
    assert r.zcard(P.webhook_due) == 1 and r.xlen(P.webhooks_dead) == 0

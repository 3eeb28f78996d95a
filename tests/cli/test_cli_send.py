from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.keys import Keys

from support.clikit import REGION, SENDER, Sesflow
from support.procs import Cluster, moto_sent
from support.until import until_sync

API_KEY = "cli-test-api-key"


@pytest.fixture
def files(cli_env: Path) -> Path:
    (cli_env / "body.html").write_text("<html><body><p>Hello</p></body></html>")
    return cli_env


def recipients_csv(path: Path, prefix: str, count: int, extra: str = "") -> Path:
    rows = "".join(f"{prefix}{n}@example.com,Name {n}\n" for n in range(count))
    path.write_text("email,name\n" + rows + extra)
    return path


def test_direct_enqueue_without_following(sesflow: Sesflow, files: Path, redis_url: str) -> None:
    csv = recipients_csv(files / "list.csv", "d", 5, extra="broken,X\nD0@example.com,dup\n")
    res = sesflow(
        "send", str(csv), "--topic", "direct", "--subject", "Hi", "--html", "body.html",
        "--batch", "2", "--direct", "--no-follow", "--at", "2030-01-01 09:00:00",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert "1 invalid address(es) left out" in res.out and "'broken'" in res.out
    assert "1 duplicate address(es)" in res.out
    assert "enqueued 5 recipient(s) in 3 message(s) as 'direct'" in res.out
    assert "scheduled for 2030-01-01T09:00:00.000Z" in res.out
    # decoded replies, which redis-py's types cannot tell
    client: Any = syncredis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(Keys().requests)
    client.close()
    messages = [json.loads(fields["message"]) for _, fields in entries]
    # the `name` column is each recipient's merge data
    assert [[(r["email"], r["data"]["name"]) for r in m["recipients"]] for m in messages] == [
        [("d0@example.com", "Name 0"), ("d1@example.com", "Name 1")],
        [("d2@example.com", "Name 2"), ("d3@example.com", "Name 3")],
        [("d4@example.com", "Name 4")],
    ]
    assert {m["scheduled_at"] for m in messages} == {"2030-01-01T09:00:00.000Z"}


def test_bad_input_sends_nothing(sesflow: Sesflow, files: Path, redis_url: str) -> None:
    csv = recipients_csv(files / "list.csv", "b", 2, extra="broken\n")
    base = ["send", str(csv), "--topic", "t", "--html", "body.html", "--direct", "--no-follow"]
    res = sesflow(*base, "--subject", "Hi", "--strict")
    assert res.code == 2 and "--strict" in res.err
    res = sesflow(*base, "--subject", "two\nlines")
    assert res.code == 2 and "line breaks" in res.err
    res = sesflow(*base, "--subject", "Hi", "--at", "whenever")
    assert res.code == 2 and "scheduled_at" in res.err
    res = sesflow("send", str(csv), "--topic", "t", "--subject", "S", "--html", "missing.html")
    assert res.code == 2 and "missing.html" in res.err
    (files / "empty.csv").write_text("email\nnope\n")
    res = sesflow("send", "empty.csv", "--topic", "t", "--subject", "S", "--html", "body.html")
    assert res.code == 2 and "no valid address" in res.err
    client = syncredis.Redis.from_url(redis_url)
    assert client.xlen(Keys().requests) == 0
    client.close()


def test_personalised_options_reach_the_message(
    sesflow: Sesflow, files: Path, redis_url: str
) -> None:
    (files / "people.csv").write_text(
        "email,first_name,code\nada@example.com,Ada,A1\nalan@example.com,,B2\n"
    )
    (files / "body.txt").write_text("Hi {{first_name}}, code {{code}}")
    (files / "terms.pdf").write_bytes(b"%PDF-1.4 terms")
    (files / "hi.html").write_text("<p>Hi {{first_name}}, code {{code}}</p>")
    base = ["send", "people.csv", "--topic", "spring", "--direct", "--no-follow"]
    # alan has no first_name and there is no default: refused before anything is written
    res = sesflow(*base, "--subject", "Hi {{first_name}}", "--html", "hi.html")
    assert res.code == 2 and "{{first_name}} is missing for 1 of 2: alan@example.com" in res.err
    # ...unless --data gives a default
    res = sesflow(*base, "--subject", "Hi {{first_name}}", "--html", "hi.html", "--data", "[1]")
    assert res.code == 2 and "--data must be a JSON object" in res.err
    res = sesflow(*base, "--subject", "Hi {{first_name}}", "--html", "hi.html", "--data", "{x")
    assert res.code == 2 and "--data is not JSON" in res.err
    res = sesflow(*base, "--template", "welcome", "--subject", "S")
    assert res.code == 2 and "--template gives the content" in res.err
    res = sesflow(*base, "--html", "hi.html")
    assert res.code == 2 and "--subject and --html are required" in res.err
    res = sesflow(*base, "--subject", "S", "--html", "hi.html", "--attach", "missing.pdf")
    assert res.code == 2 and "missing.pdf" in res.err
    (files / "run.exe").write_bytes(b"MZ")
    res = sesflow(*base, "--subject", "S", "--html", "hi.html", "--attach", "run.exe")
    assert res.code == 2 and ".exe" in res.err
    # decoded replies, which redis-py's types cannot tell
    client: Any = syncredis.Redis.from_url(redis_url, decode_responses=True)
    assert client.xlen(Keys().requests) == 0

    (files / "people.csv").write_text(
        "email,first_name,code\nada@example.com,Ada,A1\nalan@example.com,Alan,B2\n"
    )
    res = sesflow(
        *base, "--subject", "Hi {{first_name}}", "--html", "hi.html", "--text", "body.txt",
        "--reply-to", "help@example.com", "--reply-to", "Desk <desk@example.com>",
        "--attach", "terms.pdf",
    )  # fmt: skip
    assert res.code == 0, res.err
    res = sesflow(*base, "--template", "welcome")
    assert res.code == 0, res.err
    (files / "people.csv").write_text("email,first_name\nada@example.com,Ada\nalan@example.com,\n")
    res = sesflow(
        *base, "--subject", "Hi {{first_name}}", "--html", "hi.html",
        "--data", '{"first_name": "there", "code": "-"}',
    )  # fmt: skip
    assert res.code == 0, res.err
    [(_, first), (_, second), (_, third)] = client.xrange(Keys().requests)
    client.close()
    message = json.loads(first["message"])
    assert message["recipients"] == [
        {"email": "ada@example.com", "data": {"first_name": "Ada", "code": "A1"}},
        {"email": "alan@example.com", "data": {"first_name": "Alan", "code": "B2"}},
    ]
    assert message["text"] == "Hi {{first_name}}, code {{code}}"
    assert message["reply_to"] == ["help@example.com", "Desk <desk@example.com>"]
    [attachment] = message["attachments"]
    assert attachment == {
        "filename": "terms.pdf",
        "content": base64.b64encode(b"%PDF-1.4 terms").decode(),
        "content_type": "application/pdf",
    }
    templated = json.loads(second["message"])
    assert templated["template"] == "welcome"
    assert "subject" not in templated and "content" not in templated
    defaulted = json.loads(third["message"])
    assert defaulted["data"] == {"first_name": "there", "code": "-"}
    assert defaulted["recipients"][1] == {"email": "alan@example.com"}


def test_ingest_down_is_a_clear_error(sesflow: Sesflow, files: Path) -> None:
    from sesflow.cli.embedded import free_port

    csv = recipients_csv(files / "list.csv", "x", 1)
    res = sesflow(
        "send", str(csv), "--topic", "t", "--subject", "S", "--html", "body.html",
        "--no-follow", "--ingest-url", f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert res.code == 3 and "cannot reach the ingest API" in res.err


@pytest.fixture
def cluster(redis_url: str, moto_ses: Any, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(
        redis_url,
        tmp_path / "logs",
        SES_ENDPOINT_URL=moto_ses.url,
        AWS_REGION=REGION,
        EMAIL_SENDER=SENDER,
        EMAIL_RATE="200",
        API_KEY=API_KEY,
        **LOCAL_CREDENTIALS,
    )
    c.start_all(senders=1)
    yield c
    c.stop_all()


@pytest.mark.slow
def test_send_follow_rerun_and_cancel(
    sesflow: Sesflow, files: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", API_KEY)
    ingest = ["--ingest-url", cluster.url("ingest")]
    before = len(moto_sent())
    csv = recipients_csv(files / "june.csv", "j", 12)
    send = ["send", str(csv), "--topic", "june", "--subject", "June", "--html", "body.html"]

    res = sesflow(*send, "--batch", "5", *ingest)
    assert res.code == 0, res.out + res.err + cluster.all_logs()
    assert "enqueued 12 recipient(s) in 3 message(s) as 'june'" in res.out
    assert "topic june: done" in res.out
    assert "12/12" in res.out
    sent = Counter(a for m in moto_sent()[before:] for a in m.destinations["ToAddresses"])
    assert sent == Counter({f"j{n}@example.com": 1 for n in range(12)})

    # The same command again (as after a crash): every batch was already accepted.
    res = sesflow(*send, "--batch", "5", *ingest)
    assert res.code == 0, res.out + res.err
    assert "enqueued 0 recipient(s) in 3 message(s)" in res.out
    assert "(12 already enqueued by an earlier run)" in res.out
    # ...and a different body under the same keys is refused, not sent twice.
    res = sesflow(*send[:5], "Other subject", *send[6:], "--batch", "5", *ingest)
    assert res.code == 2 and "different subject" in res.err

    # Following through the stats API when Redis is not reachable from here.
    monkeypatch.delenv("REDIS_URL")
    csv2 = recipients_csv(files / "july.csv", "k", 3)
    res = sesflow(
        "send", str(csv2), "--topic", "july", "--subject", "July", "--html", "body.html",
        *ingest, "--stats-url", cluster.url("stats"),
    )  # fmt: skip
    assert res.code == 0, res.out + res.err
    assert "topic july: done" in res.out

    # A scheduled campaign, cancelled before it is due.
    csv3 = recipients_csv(files / "later.csv", "l", 4)
    res = sesflow(
        "send", str(csv3), "--topic", "later", "--subject", "Later", "--html", "body.html",
        "--at", "+1h", "--no-follow", *ingest,
    )  # fmt: skip
    assert res.code == 0 and "scheduled for" in res.out
    res = sesflow("cancel", "later", *ingest, "--json")
    assert res.code == 0, res.err
    answer = json.loads(res.out)
    assert answer["topic_id"] == "later" and answer["stopped"] in (0, 4)
    res = sesflow("cancel", "later", *ingest)
    assert res.code == 0 and "cancelled topic 'later'" in res.out

    monkeypatch.setenv("API_KEY", "wrong-cli-api-key")
    res = sesflow("cancel", "later", *ingest)
    assert res.code == 1 and "unauthorized" in res.err


@pytest.mark.slow
def test_replayed_dead_letter_is_sent_and_recounted(
    sesflow: Sesflow, cluster: Cluster, redis_url: str
) -> None:
    """A job the sender gave up on (as it leaves one: state, failed event, dead letter) goes
    through the real sender and stats once replayed: sent once, failed back to 0."""
    from sesflow.common.schema import Event, encode
    from sesflow.sender.state import dead_entry

    p = Keys().partition(0)
    # decoded replies, which redis-py's types cannot tell
    client: Any = syncredis.Redis.from_url(redis_url, decode_responses=True)
    msg_id = f"{int(time.time() * 1000)}-0"
    content = {"topic": "retry", "subject": "Again", "html": "<p>again</p>", "total": "1"}
    client.hset(p.message(msg_id), mapping={**content, "accepted_ms": msg_id[:-2]})
    client.hset(p.state(msg_id), "0", "f:transient:InternalFailure")
    for kind in ("accepted", "failed"):
        event = Event(type=kind, topic="retry", msg_id=msg_id, index=0 if kind == "failed" else -1)
        client.xadd(p.events, {"e": encode(event)})
    job = {"m": msg_id, "i": "0", "e": "again@example.com"}
    client.xadd(p.sends_dead, dead_entry("1-0", job, "transient:InternalFailure"))
    before = len(moto_sent())

    res = sesflow("dlq", "replay", "--all", "--stream", "sends")
    assert res.code == 0, res.out + res.err
    counts = until_sync(
        lambda: client.hgetall(p.stats_topic("retry")),
        lambda counts: counts.get("sent") == "1" and counts.get("failed") == "0",
        what="the replayed job counted as sent",
        within=20,
        context=cluster.all_logs,
    )
    client.close()
    assert counts["sent"] == "1" and counts["failed"] == "0" and counts["requeued"] == "1", (
        counts,
        cluster.all_logs(),
    )
    sent = [a for m in moto_sent()[before:] for a in m.destinations["ToAddresses"]]
    assert sent == ["again@example.com"]
    res = sesflow("stats", "retry", "--json")
    assert json.loads(res.out)["created"] == 0

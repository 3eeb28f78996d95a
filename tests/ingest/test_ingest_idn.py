"""Internationalised addresses: a non-ASCII domain goes to SES in punycode (SES has no SMTPUTF8),
a non-ASCII local part is refused with the reason, on every path an address takes in: the
address rules, the API, the dispatcher (XADDed requests) and the suppression list."""

from __future__ import annotations

from typing import Any

import pytest

from sesflow.common.addresses import (
    InvalidAddress,
    InvalidMailbox,
    address_key,
    ascii_address,
    normalise_mailbox,
)
from sesflow.common.errors import InputError
from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.producer import enqueue
from sesflow.common.schema import MessageRequest, decode_request
from sesflow.common.suppression import SuppressionList, entry
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.ingest.validation import Limits, validate_message

from support.ingestkit import read_events, read_jobs

LIMITS = Limits(max_recipients=10, max_subject_bytes=100, max_content_bytes=1000)


def message(emails: list[str], **kw: Any) -> MessageRequest:
    return MessageRequest(topic_id="t", emails=emails, subject="Hi", content="<p>x</p>", **kw)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("a@ü.example", "a@xn--tda.example"),
        (" Jörg.Name+x@Bücher.Example ".replace("ö", "o"), "Jorg.Name+x@xn--bcher-kva.example"),
        ("a@münchen.de", "a@xn--mnchen-3ya.de"),
        ("a@例え.テスト", "a@xn--r8jz45g.xn--zckzah"),
        ("a@xn--tda.example", "a@xn--tda.example"),  # already punycode: unchanged
        ("A@Example.COM", "A@Example.COM"),  # ASCII: unchanged, as before
    ],
)
def test_a_non_ascii_domain_becomes_punycode(given: str, sent: str) -> None:
    assert ascii_address(given) == sent


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("jörg@example.com", "non-ASCII local part"),
        ("用户@例え.テスト", "non-ASCII local part"),
        ("a@☃.net", "not a valid internationalised (IDNA 2008) name"),  # DISALLOWED in 2008
        ("a@-ü.example", "not a valid internationalised (IDNA 2008) name"),  # leading hyphen
        ("a@ü..example", "not a valid internationalised (IDNA 2008) name"),  # empty label
    ],
)
def test_what_cannot_be_sent_says_why(given: str, why: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        ascii_address(given)
    assert info.value.specific and why in str(info.value)


def test_a_syntax_error_stays_a_plain_one() -> None:
    for bad in ("nope", "a@", "@ü.example", "a b@ü.example", "a@ü"):
        with pytest.raises(InvalidAddress) as info:
            ascii_address(bad)
        assert not info.value.specific, bad


def test_the_suppression_key_is_one_for_both_spellings() -> None:
    assert address_key(" A@Ü.example ") == address_key("a@xn--tda.example") == "a@xn--tda.example"
    assert address_key("jörg@x.io") == "jörg@x.io"  # not convertible: still a key
    assert address_key("a@☃.net") == "a@☃.net"


def test_a_sender_mailbox_is_converted_too() -> None:
    assert normalise_mailbox("News <news@bücher.example>") == "News <news@xn--bcher-kva.example>"
    with pytest.raises(InvalidMailbox, match="non-ASCII local part"):
        normalise_mailbox("News <jörg@example.com>")


def test_validation_keeps_the_punycode_and_folds_duplicates() -> None:
    valid = validate_message(
        message(emails=["a@ü.example", "A@xn--tda.example", "b@x.io"]), LIMITS, strict=True
    )
    assert valid.emails == ["a@xn--tda.example", "b@x.io"]
    assert valid.request.emails == valid.emails
    assert valid.duplicates == 1


def test_strict_validation_names_the_address_and_why() -> None:
    with pytest.raises(InputError) as info:
        validate_message(message(emails=["ok@x.io", "jörg@x.io", "bad"]), LIMITS, strict=True)
    assert info.value.error == "invalid_addresses"
    assert info.value.status == 400
    detail = info.value.detail
    assert "'jörg@x.io' (has a non-ASCII local part" in detail
    assert "SMTPUTF8" in detail
    assert detail.endswith(", bad")  # a plain syntax error is listed as before


def test_lenient_validation_reports_why_in_the_rejected_detail() -> None:
    valid = validate_message(message(emails=["ok@x.io", "a@☃.net"]), LIMITS, strict=False)
    assert valid.emails == ["ok@x.io"]
    assert valid.invalid == ["a@☃.net"]
    assert "'a@☃.net' (has a domain that is not a valid internationalised" in valid.invalid_detail


async def test_the_api_sends_punycode_and_refuses_a_non_ascii_local_part(
    http: Any, redis: Any, keys: Keys
) -> None:
    body = {"messages": [{"topic_id": "t", "emails": ["a@Bücher.example"], "subject": "s",
                          "content": "c"}]}  # fmt: skip
    resp = await http.post("/v1/messages", json=body)
    assert resp.status == 202, await resp.text()
    [(_, fields)] = await redis.xrange(keys.requests)
    assert decode_request(fields["message"]).emails == ["a@xn--bcher-kva.example"]

    body["messages"][0]["emails"] = ["a@x.io", "jörg@x.io"]
    resp = await http.post("/v1/messages", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "invalid_addresses"
    assert "'jörg@x.io' (has a non-ASCII local part" in answer["detail"]

    body["messages"][0]["emails"] = ["a@☃.net"]
    answer = await (await http.post("/v1/messages", json=body)).json()
    assert answer["error"] == "invalid_addresses" and "IDNA 2008" in answer["detail"]

    body["messages"][0]["from_email"] = "jörg@x.io"
    body["messages"][0]["emails"] = ["a@x.io"]
    resp = await http.post("/v1/messages", json=body)
    answer = await resp.json()
    assert resp.status == 400 and answer["error"] == "invalid_from"
    assert "non-ASCII local part" in answer["detail"]
    assert await redis.xlen(keys.requests) == 1


async def test_the_dispatcher_converts_xadded_requests(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await SuppressionList(redis, keys).add(entry("gone@xn--tda.example", "complaint"))
    await enqueue(
        redis, keys, message(["a@ü.example", "gone@Ü.example", "jörg@x.io", "c@münchen.de"])
    )
    reply = await dispatcher.client.xreadgroup(
        DISPATCH_GROUP, "test", {keys.requests: ">"}, count=1
    )
    await dispatcher.handle(*reply[0][1][0])
    jobs = await read_jobs(redis, p)
    assert [j["e"] for j in jobs] == ["a@xn--tda.example", "c@xn--mnchen-3ya.de"]
    events = {e.type: e for e in await read_events(redis, p)}
    assert events["suppressed"].n == 1
    assert events["rejected"].n == 1
    assert "'jörg@x.io' (has a non-ASCII local part" in events["rejected"].detail


async def test_one_suppression_entry_for_both_spellings(http: Any) -> None:
    resp = await http.put("/v1/suppressions/a@ü.example", json={"reason": "manual"})
    assert resp.status == 200
    assert (await resp.json())["email"] == "a@xn--tda.example"
    got = await http.get("/v1/suppressions/A@xn--tda.example")
    assert got.status == 200 and (await got.json())["email"] == "a@xn--tda.example"
    page = await (await http.get("/v1/suppressions")).json()
    assert page["total"] == 1
    assert (await http.delete("/v1/suppressions/a@xn--tda.example")).status == 200
    assert (await http.get("/v1/suppressions/a@ü.example")).status == 404

    resp = await http.put("/v1/suppressions/jörg@x.io")
    answer = await resp.json()
    assert resp.status == 400 and answer["error"] == "invalid_address"
    assert answer["detail"].startswith("'jörg@x.io' has a non-ASCII local part")
    resp = await http.get("/v1/suppressions/a@☃.net")
    assert resp.status == 400 and "IDNA 2008" in (await resp.json())["detail"]

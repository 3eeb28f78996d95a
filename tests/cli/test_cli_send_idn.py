"""`sesflow send` with internationalised addresses: the CSV's non-ASCII domains are sent in
punycode and reported; a non-ASCII local part is left out with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis as syncredis

from sesflow.cli.recipients import parse
from sesflow.common.keys import Keys

from support.clikit import Sesflow

CSV = (
    "email,name\n"
    "a@bücher.example,A\n"
    "jörg@example.com,J\n"
    "b@☃.net,B\n"
    "A@xn--bcher-kva.example,dup\n"
    "c@example.com,C\n"
)


def test_recipients_convert_and_say_why() -> None:
    recipients = parse("list.csv", CSV.encode())
    assert recipients.emails == ["a@xn--bcher-kva.example", "c@example.com"]
    assert recipients.duplicates == 1
    assert recipients.converted == [(2, "a@bücher.example", "a@xn--bcher-kva.example")]
    assert [value for _, value in recipients.invalid] == ["jörg@example.com", "b@☃.net"]
    assert "non-ASCII local part" in recipients.why[3]
    assert "IDNA 2008" in recipients.why[4]


def test_the_send_report_shows_both(sesflow: Sesflow, cli_env: Path, redis_url: str) -> None:
    (cli_env / "body.html").write_text("<p>Hello</p>")
    (cli_env / "list.csv").write_text(CSV)
    res = sesflow(
        "send", "list.csv", "--topic", "idn", "--subject", "Hi", "--html", "body.html",
        "--direct", "--no-follow",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert "2 invalid address(es) left out" in res.out
    assert "3: 'jörg@example.com' has a non-ASCII local part" in res.out
    assert "4: 'b@☃.net' has a domain that is not a valid internationalised" in res.out
    assert "1 internationalised domain(s) converted to punycode" in res.out
    assert "2: a@bücher.example -> a@xn--bcher-kva.example" in res.out
    client: Any = syncredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        [(_, fields)] = client.xrange(Keys().requests)
    finally:
        client.close()
    sent = [r["email"] for r in json.loads(fields["message"])["recipients"]]
    assert sent == ["a@xn--bcher-kva.example", "c@example.com"]

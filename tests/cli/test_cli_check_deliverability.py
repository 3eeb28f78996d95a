"""`sesflow check` against the SES stub (an account as SES reports it, not a local run) and a
local DNS responder: what the Gmail and Yahoo bulk-sender rules and SES require."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from support.clikit import SENDER, Sesflow
from support.dnsresponder import DnsResponder
from support.sesstub_setup import (
    AccountSetup,
    EventDestination,
    IdentitySetup,
    SetupConfig,
)
from support.stubprocess import StubProcess

DOMAIN = SENDER.rpartition("@")[2]
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CONFIG_SET = "marketing"
HEALTHY = SetupConfig(
    identities={
        DOMAIN: IdentitySetup(mail_from_domain=f"bounce.{DOMAIN}"),
        SENDER: IdentitySetup(),
    },
    configuration_sets={CONFIG_SET: [EventDestination(topic_arn=TOPIC)]},
)


def set_up(stub: StubProcess, config: SetupConfig) -> None:
    request = urllib.request.Request(
        f"{stub.url}/stub/setup",
        data=msgspec.json.encode(config),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture
def stub() -> Iterator[StubProcess]:
    with StubProcess() as process:
        set_up(process, HEALTHY)
        yield process


@pytest.fixture
def dns() -> Iterator[DnsResponder]:
    with DnsResponder({f"_dmarc.{DOMAIN}": ["v=DMARC1; p=quarantine; rua=mailto:d@x.io"]}) as dns:
        yield dns


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, stub: StubProcess, cli_env: object) -> StubProcess:
    """SES as the stub, with ordinary (not `sesflow up`'s local) credentials: not a local run."""
    monkeypatch.setenv("SES_ENDPOINT_URL", stub.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTUBSTUBSTUBSTUB")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stub-secret")
    monkeypatch.setenv("EMAIL_SENDER", f"News <{SENDER}>")
    monkeypatch.setenv("EMAIL_RATE", "10")
    monkeypatch.setenv("SES_CONFIGURATION_SET", CONFIG_SET)
    monkeypatch.setenv("SNS_TOPIC_ARNS", TOPIC)
    monkeypatch.setenv("SERVER_URL", "https://track.sesflow.test")
    return stub


def check(sesflow: Sesflow, dns: DnsResponder, *args: str) -> tuple[int, dict[str, Any]]:
    res = sesflow("check", "--skip-redis", "--json", "--dns-server", dns.address, *args)
    return res.code, {f["check"]: f for f in json.loads(res.out)}


def test_a_healthy_setup_passes(sesflow: Sesflow, env: StubProcess, dns: DnsResponder) -> None:
    res = sesflow("check", "--skip-redis", "--dns-server", dns.address)
    assert res.code == 0, res.out + res.err
    assert "ready to send" in res.out
    code, got = check(sesflow, dns)
    assert code == 0
    status = {name: f["status"] for name, f in got.items()}
    for name in ("DKIM", "MAIL FROM", "DMARC", "production access", "sending", "enforcement"):
        assert status[name] == "ok", got[name]
    assert status["feedback"] == "ok" and status["SERVER_URL"] == "ok"
    assert got["DKIM"]["detail"] == f"{DOMAIN}: DKIM SUCCESS, signing"
    assert got["MAIL FROM"]["detail"].startswith(f"bounce.{DOMAIN} SUCCESS")
    assert got["DMARC"]["detail"] == f"p=quarantine at _dmarc.{DOMAIN}"
    assert TOPIC in got["feedback"]["detail"]
    assert f"_dmarc.{DOMAIN}" in dns.queries


def test_each_problem_is_named_with_its_fix(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_up(
        env,
        SetupConfig(
            identities={
                DOMAIN: IdentitySetup(dkim_status="PENDING", dkim_tokens=["abc"]),
                SENDER: IdentitySetup(),
            },
            configuration_sets=HEALTHY.configuration_sets,
            account=AccountSetup(production_access=False),
        ),
    )
    monkeypatch.setenv("SERVER_URL", "http://track.sesflow.test")
    res = sesflow("check", "--skip-redis", "--dns-server", dns.address)
    assert res.code == 1
    lines = res.out.splitlines()

    def line_of(check: str) -> tuple[str, str]:
        """The finding's line and the fix under it."""
        n = next(i for i, line in enumerate(lines) if line.split()[1:2] == check.split()[:1])
        return lines[n], lines[n + 1]

    dkim, fix = line_of("DKIM")
    assert dkim.startswith("fail") and "DKIM PENDING" in dkim
    assert "fix: publish in DNS: abc._domainkey.sesflow.test CNAME abc.dkim.amazonses.com" in fix
    mail_from, fix = line_of("MAIL FROM")
    assert mail_from.startswith("fail") and "no custom MAIL FROM domain" in mail_from
    assert "put-email-identity-mail-from-attributes --email-identity sesflow.test" in fix
    assert "feedback-smtp.us-east-1.amazonses.com" in fix
    sandbox, fix = line_of("production access")
    assert sandbox.startswith("fail") and "ProductionAccessEnabled is false" in sandbox
    assert "Request production access" in fix
    url, fix = line_of("SERVER_URL")
    assert url.startswith("fail") and "not https" in url and "RFC 8058" in url
    assert "SERVER_URL=https://" in fix
    assert "4 check(s) failed" in res.out
    code, got = check(sesflow, dns)
    assert code == 1
    failed = {name for name, f in got.items() if f["status"] == "fail"}
    assert failed == {"DKIM", "MAIL FROM", "production access", "SERVER_URL"}


def test_account_standing_and_feedback_problems(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_up(
        env,
        msgspec.structs.replace(
            HEALTHY,
            account=AccountSetup(sending_enabled=False, enforcement_status="PROBATION"),
            configuration_sets={
                CONFIG_SET: [EventDestination(topic_arn=TOPIC, events=["BOUNCE", "DELIVERY"])]
            },
        ),
    )
    code, got = check(sesflow, dns)
    assert code == 1
    assert got["sending"]["status"] == "fail"
    assert "put-account-sending-attributes --sending-enabled" in got["sending"]["hint"]
    assert got["enforcement"]["detail"] == "EnforcementStatus PROBATION"
    assert "COMPLAINT" in got["feedback"]["detail"] and got["feedback"]["status"] == "fail"

    # a topic SNS_TOPIC_ARNS does not list: the tracker would refuse what it sends
    other = "arn:aws:sns:us-east-1:123456789012:elsewhere"
    set_up(env, SetupConfig(
        identities=HEALTHY.identities,
        configuration_sets={CONFIG_SET: [EventDestination(topic_arn=other)]},
    ))  # fmt: skip
    code, got = check(sesflow, dns)
    assert code == 1
    assert got["feedback"]["status"] == "fail" and other in got["feedback"]["detail"]
    assert got["feedback"]["hint"] == f"add {other} to SNS_TOPIC_ARNS"


def test_no_domain_identity(sesflow: Sesflow, env: StubProcess, dns: DnsResponder) -> None:
    set_up(env, msgspec.structs.replace(HEALTHY, identities={SENDER: IdentitySetup()}))
    code, got = check(sesflow, dns)
    assert code == 1
    assert got["DKIM"]["status"] == "fail" and "is not an SES identity" in got["DKIM"]["detail"]
    assert "create-email-identity --email-identity sesflow.test" in got["DKIM"]["hint"]
    assert got["MAIL FROM"]["status"] == "fail"


def test_no_dmarc_record_is_a_finding(sesflow: Sesflow, env: StubProcess) -> None:
    with DnsResponder({}) as dns:
        code, got = check(sesflow, dns)
    assert code == 1
    assert got["DMARC"]["status"] == "fail"
    assert got["DMARC"]["detail"] == f"no DMARC record at _dmarc.{DOMAIN}"
    assert f'_dmarc.{DOMAIN} TXT "v=DMARC1; p=none' in got["DMARC"]["hint"]


def test_dmarc_of_a_parent_domain_and_bad_records(
    sesflow: Sesflow, env: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_SENDER", f"news@mail.{DOMAIN}")
    identities = {f"mail.{DOMAIN}": IdentitySetup(mail_from_domain=f"b.mail.{DOMAIN}")}
    set_up(env, msgspec.structs.replace(HEALTHY, identities=identities))
    records = {f"_dmarc.{DOMAIN}": ["v=DMARC1; p=reject; sp=none"]}
    with DnsResponder(records) as dns:
        code, got = check(sesflow, dns)
        assert code == 0, got
        assert got["DMARC"]["detail"].startswith(
            f"p=none at _dmarc.{DOMAIN} (inherited by mail.{DOMAIN})"
        )
        assert dns.queries[:2] == [f"_dmarc.mail.{DOMAIN}", f"_dmarc.{DOMAIN}"]
        dns.records[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; p=reject", "v=DMARC1; p=none"]
        code, got = check(sesflow, dns)
        assert code == 1 and "has 2 DMARC records" in got["DMARC"]["detail"]
        dns.records[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; rua=mailto:x@y.io"]
        code, got = check(sesflow, dns)
        assert code == 1 and "no valid policy" in got["DMARC"]["detail"]


def test_a_dns_timeout_is_a_clear_finding(sesflow: Sesflow, env: StubProcess) -> None:
    with DnsResponder({}) as dns:
        dns.silent = True
        code, got = check(sesflow, dns, "--dns-timeout", "0.5")
    assert got["DMARC"]["status"] == "warn"
    assert got["DMARC"]["detail"] == f"cannot read _dmarc.{DOMAIN}: DNS did not answer within 0.5s"
    assert "--dns-server" in got["DMARC"]["hint"]
    assert code == 0  # a check that could not be made warns; --strict fails on it
    assert check(sesflow, dns, "--dns-timeout", "0.5", "--strict")[0] == 1


def test_servfail_and_bad_options(sesflow: Sesflow, env: StubProcess) -> None:
    with DnsResponder({}) as dns:
        dns.servfail = True
        _, got = check(sesflow, dns)
    assert got["DMARC"]["status"] == "warn" and "DNS failed" in got["DMARC"]["detail"]
    res = sesflow("check", "--skip-redis", "--dns-server", "not an address:xx")
    assert res.code == 2 and "--dns-server" in res.err
    res = sesflow("check", "--skip-redis", "--dns-timeout", "0")
    assert res.code == 2


def test_server_url_on_this_machine_and_unset(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_URL", "https://localhost:8443")
    _, got = check(sesflow, dns)
    assert got["SERVER_URL"]["status"] == "fail"
    assert "recipients cannot reach it" in got["SERVER_URL"]["detail"]
    monkeypatch.delenv("SERVER_URL")
    _, got = check(sesflow, dns)
    assert got["SERVER_URL"]["detail"].startswith("http://localhost:3001: SERVER_URL is not set")


def test_no_configuration_set_warns(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SES_CONFIGURATION_SET")
    code, got = check(sesflow, dns)
    assert code == 0
    assert got["feedback"]["status"] == "warn"
    assert "create-configuration-set-event-destination" in got["feedback"]["hint"]
    assert TOPIC in got["feedback"]["hint"]

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


def check_list(sesflow: Sesflow, dns: DnsResponder) -> tuple[int, list[dict[str, Any]]]:
    """The findings in order (several share a check name: one per configuration set)."""
    res = sesflow("check", "--skip-redis", "--json", "--dns-server", dns.address)
    return res.code, json.loads(res.out)


def of(findings: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check]


@pytest.fixture
def ses_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(operation, ConfigurationSetName) of every SES call the command makes, in order."""
    from botocore.client import BaseClient

    calls: list[tuple[str, str]] = []
    make_call = BaseClient._make_api_call

    def counted(client: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append((operation, str(params.get("ConfigurationSetName", ""))))
        return make_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", counted)
    return calls


def test_every_configuration_set_a_message_may_name_is_checked(
    sesflow: Sesflow,
    env: StubProcess,
    dns: DnsResponder,
    monkeypatch: pytest.MonkeyPatch,
    ses_calls: list[tuple[str, str]],
) -> None:
    monkeypatch.setenv("SES_CONFIGURATION_SETS", "a,b")
    sets = {
        **HEALTHY.configuration_sets,
        "a": [EventDestination(topic_arn=TOPIC)],
        "b": [EventDestination(name="metrics")],  # CloudWatch only: no feedback reaches sesflow
    }
    set_up(env, msgspec.structs.replace(HEALTHY, configuration_sets=sets))
    res = sesflow("check", "--skip-redis", "--dns-server", dns.address)
    assert res.code == 1, res.out
    lines = res.out.splitlines()
    failed = [n for n, line in enumerate(lines) if line.startswith("fail")]
    assert len(failed) == 1 and "1 check(s) failed" in res.out
    assert lines[failed[0]].split()[1] == "feedback"
    assert "configuration set b (SES_CONFIGURATION_SETS) publishes no enabled" in lines[failed[0]]
    fix = lines[failed[0] + 1]
    assert "fix: `aws sesv2 create-configuration-set-event-destination" in fix
    assert "--configuration-set-name b " in fix and TOPIC in fix

    ses_calls.clear()
    code, got = check_list(sesflow, dns)
    assert code == 1
    exists = of(got, "configuration set")
    assert [(f["status"], f["detail"]) for f in exists] == [
        ("ok", f"{CONFIG_SET} (the default, SES_CONFIGURATION_SET) exists"),
        ("ok", "a (SES_CONFIGURATION_SETS) exists"),
        ("ok", "b (SES_CONFIGURATION_SETS) exists"),
    ]
    feedback = of(got, "feedback")
    assert [f["status"] for f in feedback] == ["ok", "ok", "fail"]
    assert feedback[0]["detail"].startswith(f"configuration set {CONFIG_SET} (the default")
    assert feedback[1]["detail"].startswith("configuration set a (SES_CONFIGURATION_SETS)")
    assert "--configuration-set-name b " in feedback[2]["hint"]
    # one GetConfigurationSet and one GetConfigurationSetEventDestinations per set, no more
    for operation in ("GetConfigurationSet", "GetConfigurationSetEventDestinations"):
        assert [s for op, s in ses_calls if op == operation] == [CONFIG_SET, "a", "b"]

    # b does not exist at all: named with the command that creates it
    del sets["b"]
    set_up(env, msgspec.structs.replace(HEALTHY, configuration_sets=sets))
    res = sesflow("check", "--skip-redis", "--dns-server", dns.address)
    assert res.code == 1
    lines = res.out.splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("fail"))
    assert "'b' in SES_CONFIGURATION_SETS does not exist in SES (us-east-1)" in lines[n]
    assert "`aws sesv2 create-configuration-set --configuration-set-name b`" in lines[n + 1]
    code, got = check_list(sesflow, dns)
    assert code == 1
    assert [f["status"] for f in of(got, "configuration set")] == ["ok", "ok", "fail"]
    assert [f["status"] for f in of(got, "feedback")] == ["ok", "ok", "skip"]
    assert of(got, "feedback")[2]["detail"] == "needs the configuration set 'b'"


def test_healthy_configuration_sets_pass(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default listed again, and twice: each set is checked once, the default first
    monkeypatch.setenv("SES_CONFIGURATION_SETS", f"b,{CONFIG_SET},a,b")
    sets = {name: [EventDestination(topic_arn=TOPIC)] for name in (CONFIG_SET, "a", "b")}
    set_up(env, msgspec.structs.replace(HEALTHY, configuration_sets=sets))
    res = sesflow("check", "--skip-redis", "--dns-server", dns.address)
    assert res.code == 0, res.out
    assert "ready to send" in res.out
    code, got = check_list(sesflow, dns)
    assert code == 0
    exists, feedback = of(got, "configuration set"), of(got, "feedback")
    assert [f["detail"].split()[0] for f in exists] == [CONFIG_SET, "b", "a"]
    assert [f["detail"].split()[2] for f in feedback] == [CONFIG_SET, "b", "a"]
    assert {f["status"] for f in exists + feedback} == {"ok"}

    # no default set: messages naming no set still warn, each listed set is checked
    monkeypatch.delenv("SES_CONFIGURATION_SET")
    monkeypatch.setenv("SES_CONFIGURATION_SETS", "a")
    code, got = check_list(sesflow, dns)
    assert code == 0
    assert [(f["status"], f["detail"]) for f in of(got, "configuration set")] == [
        ("ok", "none (SES_CONFIGURATION_SET is not set)"),
        ("ok", "a (SES_CONFIGURATION_SETS) exists"),
    ]
    assert [f["status"] for f in of(got, "feedback")] == ["warn", "ok"]


def test_only_the_default_set_reads_as_before(
    sesflow: Sesflow, env: StubProcess, dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, got = check_list(sesflow, dns)
    assert code == 0
    assert [f["detail"] for f in of(got, "configuration set")] == [f"{CONFIG_SET} exists"]
    assert [f["detail"] for f in of(got, "feedback")] == [
        f"configuration set {CONFIG_SET} publishes bounces and complaints to {TOPIC}"
    ]
    monkeypatch.delenv("SES_CONFIGURATION_SET")
    code, got = check_list(sesflow, dns)
    assert [f["detail"] for f in of(got, "configuration set")] == [
        "none (SES_CONFIGURATION_SET is not set)"
    ]
    assert [f["status"] for f in of(got, "feedback")] == ["warn"]

"""A broken setup is not a bad recipient: a configuration set that does not exist or an
unverified sender identity pauses sending with that setup (every replica), fails nothing, and a
probe resumes it once fixed; a MessageRejected about one message stays permanent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from sesflow.common import sentry
from sesflow.common.errors import SesSetupFault
from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.sender import metrics
from sesflow.sender.ses_client import SesClient
from sesflow.sender.setup_faults import SetupFaults, scope_of, scopes_of
from sesflow.sender.worker import Sender

from support.senderkit import (
    SECRET,
    FakeSes,
    Running,
    events,
    new_msg_id,
    queue_jobs,
    reasons,
    states,
)
from support.sesstub import SesStub
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
NOT_FOUND = SesSetupFault(
    "NotFoundException", "Configuration set <typo> does not exist.", 404, "configuration_set"
)


async def counts(redis: Any, msg_id: str) -> dict[str, int]:
    """Final states by kind (s, f, u...) and `queued` for jobs without one."""
    found: dict[str, int] = {}
    for value in (await states(redis, PART, msg_id)).values():
        kind = "inflight" if value.startswith("i:") else value.split(":", 1)[0]
        found[kind] = found.get(kind, 0) + 1
    return found


async def all_sent(redis: Any, msg_id: str, count: int) -> bool:
    return (await counts(redis, msg_id)).get("s", 0) == count


async def paused_scopes(redis: Any) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(KEYS.setup_paused)
    return {scope: json.loads(value) for scope, value in raw.items()}


async def test_a_setup_fault_pauses_fails_nothing_alerts_and_a_probe_resumes(
    redis: Any,
    sender_settings: Any,
    make_sender: Any,
    running: Any,
    fake_ses: FakeSes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = True
    reported: list[dict[str, Any]] = []
    monkeypatch.setattr(sentry, "report", lambda exc=None, message="", **kw: reported.append(kw))

    async def misspelled_configuration_set(email: Any) -> None:
        if broken:
            raise NOT_FOUND

    fake_ses.hook = misspelled_configuration_set
    faults_before = metrics.SETUP_FAULTS.labels("configuration_set")._value.get()
    emails = [f"r{n}@example.org" for n in range(30)]
    msg_id, _ = await queue_jobs(redis, KEYS, emails)
    settings = sender_settings(
        SES_CONFIGURATION_SET="typo", SETUP_PROBE_INTERVAL="0.4", MAX_ATTEMPTS="2"
    )
    with capture_logs() as logs:
        run = running(make_sender(settings))
        await until(lambda: has_pause(redis, "configuration-set:typo"))
        await asyncio.sleep(1.5)  # several probe intervals, more than MAX_ATTEMPTS faults per job
    # the alarm goes off once per pause, not once per job that met the fault
    alarms = [e for e in logs if e["log_level"] == "error" and "setup fault" in e["event"]]
    assert len(alarms) == 1 and alarms[0]["scope"] == "configuration-set:typo"
    assert reported == [{"scope": "configuration-set:typo", "code": "NotFoundException"}]
    calls_while_broken = sum(fake_ses.calls.values())
    # the first wave (SENDER_CONCURRENCY calls in flight) and about one probe per interval
    assert calls_while_broken <= 8 + 6, fake_ses.calls
    # nothing failed, nothing final: all still queued, but for the probe that may be mid-call
    found = await counts(redis, msg_id)
    assert found.get("inflight", 0) <= 1 and not found.keys() - {"inflight"}, found
    pause = (await paused_scopes(redis))["configuration-set:typo"]
    assert pause["reason"] == "configuration_set" and pause["code"] == "NotFoundException"
    assert "does not exist" in pause["message"]
    assert metrics.SETUP_FAULTS.labels("configuration_set")._value.get() > faults_before
    assert metrics.SETUP_PAUSED._value.get() == 1
    broken = False  # the configuration set is created
    await until(lambda: all_sent(redis, msg_id, len(emails)), within=10)
    await run.stop()
    assert fake_ses.sent == {e: 1 for e in emails}
    assert await paused_scopes(redis) == {}
    assert {e.type for e in await events(redis, PART)} == {"sent"}
    assert await redis.xlen(PART.sends_dead) == 0


async def has_pause(redis: Any, scope: str) -> bool:
    return scope in await paused_scopes(redis)


async def test_a_pause_outlives_a_restart_and_is_shared_by_every_replica(
    redis: Any, sender_settings: Any, make_sender: Any, running: Any, fake_ses: FakeSes
) -> None:
    """A pause another replica (or an earlier run) stored: this sender sends nothing but
    one probe per interval; the probe's success resumes it."""
    settings = sender_settings(SES_CONFIGURATION_SET="typo", SETUP_PROBE_INTERVAL="0.5")
    first = make_sender(settings)
    await first.setup.record("configuration-set:typo", NOT_FOUND)
    msg_id, _ = await queue_jobs(redis, KEYS, [f"q{n}@example.org" for n in range(10)])
    run = running(make_sender(settings))
    await asyncio.sleep(0.3)
    assert sum(fake_ses.calls.values()) == 0  # the probe comes an interval after the fault
    await until(lambda: all_sent(redis, msg_id, 10))
    await run.stop()
    assert await paused_scopes(redis) == {}


async def campaign_sender(settings: Settings, redis: Any) -> tuple[SesClient, Running]:
    ses = SesClient(settings)
    return ses, Running(Sender(settings, redis, ses, SECRET))


async def test_an_unverified_sender_pauses_its_messages_a_rejected_message_still_fails(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """Against the stub: a message from an unverified identity waits (its setup is paused),
    a message from the verified one goes on, and its recipient that SES rejects for the message
    itself fails at once."""
    async with SesStub(verified_identities=["example.com"], reject_pattern="^bad@") as stub:
        settings = make_settings(
            SES_ENDPOINT_URL=stub.url,
            EMAIL_SENDER="news@example.com",
            EMAIL_RATE="500",
            EMAIL_BURST="20",
            SENDER_CONCURRENCY="8",
            SETUP_PROBE_INTERVAL="0.3",
            **CREDENTIALS,
        )
        good = ["a@example.org", "bad@example.org", "b@example.org"]
        good_id, _ = await queue_jobs(redis, KEYS, good)
        waiting = [f"w{n}@example.org" for n in range(5)]
        waiting_id, _ = await queue_jobs(
            redis, KEYS, waiting, msg_id=new_msg_id(1), from_email="Promo <promo@unverified.net>"
        )
        ses, run = await campaign_sender(settings, redis)
        try:
            await until(lambda: has_pause(redis, "from:promo@unverified.net"))
            await until(lambda: final_count(redis, good_id, 3))
            assert await counts(redis, good_id) == {"s": 2, "f": 1}
            assert (await states(redis, PART, good_id))[1] == "f"
            assert (await reasons(redis, PART, good_id))[1] == "rejected:MessageRejected"
            await asyncio.sleep(0.8)
            assert await counts(redis, waiting_id) == {}
            assert stub.sent == 2
            pause = (await paused_scopes(redis))["from:promo@unverified.net"]
            assert pause["reason"] == "identity" and "promo@unverified.net" in pause["message"]
            stub.configure(verified_identities=["example.com", "unverified.net"])
            await until(lambda: all_sent(redis, waiting_id, len(waiting)))
        finally:
            await run.stop()
            await ses.close()
        assert {r: n for r, n in stub.recipients.items() if r in waiting} == dict.fromkeys(
            waiting, 1
        )
        assert await paused_scopes(redis) == {}


async def final_count(redis: Any, msg_id: str, count: int) -> bool:
    found = await counts(redis, msg_id)
    return sum(n for kind, n in found.items() if kind != "inflight") == count


async def test_a_thousand_recipients_survive_a_misspelled_configuration_set(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """The stub answers NotFoundException to every call while 1,000 recipients are queued for
    two replicas: none fails, all stay queued; once it is fixed each is sent exactly once."""
    async with SesStub(error_rate=1.0, error_status=404) as stub:
        settings = make_settings(
            SES_ENDPOINT_URL=stub.url,
            SES_CONFIGURATION_SET="typo",
            EMAIL_RATE="3000",
            EMAIL_BURST="50",
            SENDER_CONCURRENCY="16",
            MAX_ATTEMPTS="2",
            SETUP_PROBE_INTERVAL="0.5",
            **CREDENTIALS,
        )
        emails = [f"k{n}@example.org" for n in range(1000)]
        msg_id, _ = await queue_jobs(redis, KEYS, emails)
        replicas = [await campaign_sender(settings, redis) for _ in range(2)]
        try:
            await until(lambda: has_pause(redis, "configuration-set:typo"))
            await asyncio.sleep(2.0)
            refused = stub.injected_errors
            # the first wave of both replicas, then about one probe per interval cluster-wide
            assert refused <= 2 * 16 + 2.0 / 0.5 + 2, refused
            # not one failed, every one still queued (a probe may be in its SES call right now)
            assert set(await counts(redis, msg_id)) <= {"inflight"}
            stub.configure(error_rate=0.0)
            await until(lambda: all_sent(redis, msg_id, len(emails)), within=30)
        finally:
            for ses, run in replicas:
                await run.stop()
                await ses.close()
        assert stub.recipients == {e: 1 for e in emails}
        assert stub.sent == len(emails)
        assert await redis.xlen(PART.sends_dead) == 0
        assert await paused_scopes(redis) == {}


async def test_jobs_that_waited_for_a_rate_slot_do_not_send_into_a_fresh_pause(
    redis: Any, sender_settings: Any, make_sender: Any, running: Any, fake_ses: FakeSes
) -> None:
    """At 20/s the 8 jobs of a replica hold slots up to 400 ms ahead; once the first call
    meets the fault, none of the others sends on its slot."""

    async def misspelled_configuration_set(email: Any) -> None:
        raise NOT_FOUND

    fake_ses.hook = misspelled_configuration_set
    await queue_jobs(redis, KEYS, [f"slow{n}@example.org" for n in range(8)])
    settings = sender_settings(
        SES_CONFIGURATION_SET="typo", EMAIL_RATE="20", EMAIL_BURST="1", SETUP_PROBE_INTERVAL="30"
    )
    run = running(make_sender(settings))
    await until(lambda: has_pause(redis, "configuration-set:typo"))
    await asyncio.sleep(0.8)
    await run.stop()
    assert sum(fake_ses.calls.values()) == 1, fake_ses.calls


def test_scopes_name_what_a_fault_blames() -> None:
    assert scopes_of("News <News@Example.com>", "") == ("all", "from:news@example.com")
    assert scopes_of("a@b.c", "cs") == ("all", "from:a@b.c", "configuration-set:cs")
    identity = SesSetupFault("MessageRejected", "not verified", 400, "identity")
    mail_from = SesSetupFault("MailFromDomainNotVerifiedException", "", 400, "mail_from_domain")
    endpoint = SesSetupFault("HTTP404", "", 404, "endpoint")
    assert scope_of(identity, "News <news@example.com>", "cs") == "from:news@example.com"
    assert scope_of(mail_from, "a@b.c", "cs") == "from:a@b.c"
    assert scope_of(NOT_FOUND, "a@b.c", "cs") == "configuration-set:cs"
    assert scope_of(NOT_FOUND, "a@b.c", "") == "all"  # a template or contact list: everything
    assert scope_of(endpoint, "a@b.c", "cs") == "all"
    # what a job waits on is what a fault pauses
    for fault in (identity, mail_from, NOT_FOUND, endpoint):
        assert scope_of(fault, "a@b.c", "cs") in scopes_of("a@b.c", "cs")


async def test_a_pause_that_no_fault_confirms_any_more_is_dropped(redis: Any) -> None:
    """SES_CONFIGURATION_SET fixed and the senders restarted: no job uses the old scope, so
    no probe would lift its pause; it goes after STALE_PROBES intervals without a fault."""
    faults = SetupFaults(redis, KEYS, 0.05, "me")  # stale after 10 x 50 ms
    await faults.record("configuration-set:tpyo", NOT_FOUND)
    await faults.refresh()
    assert faults.blocking(("configuration-set:tpyo",))
    await asyncio.sleep(0.3)
    await faults.record("configuration-set:tpyo", NOT_FOUND)  # a probe met it again: renewed
    await asyncio.sleep(0.3)
    await faults.refresh()
    assert faults.blocking(("configuration-set:tpyo",))
    await asyncio.sleep(0.3)
    await faults.refresh()
    assert not faults.blocking(("configuration-set:tpyo",))
    assert await paused_scopes(redis) == {}

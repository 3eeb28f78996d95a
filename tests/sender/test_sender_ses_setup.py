"""Per-message SES setup in the sender, against the SES stub: SES receives each message's
configuration set and tenant; a paused configuration set or tenant pauses only its own jobs,
which are parked (no slot, no pump depth) while the others keep sending, and go out exactly once
after the pause is lifted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.sender import metrics
from sesflow.sender.ses_client import SesClient
from sesflow.sender.state import DeliveryState, Kind
from sesflow.sender.worker import Sender

from support.senderkit import SECRET, queue_jobs, states
from support.sesstub import SesStub
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub() as ses:
        yield ses


@pytest.fixture
async def stub_sender(
    sender_settings: Callable[..., Settings], redis: Any, stub: SesStub
) -> AsyncIterator[Callable[..., Sender]]:
    """A sender on the real SES client against the stub, with few slots: jobs waiting on a
    paused setup in their slots would starve every other message."""
    clients: list[SesClient] = []

    def make(**env: Any) -> Sender:
        settings = sender_settings(
            SES_ENDPOINT_URL=stub.url,
            SENDER_CONCURRENCY="4",
            SETUP_PROBE_INTERVAL="0.3",
            **CREDENTIALS,
            **env,
        )
        ses = SesClient(settings)
        clients.append(ses)
        return Sender(settings, redis, ses, SECRET)

    yield make
    for ses in clients:
        await ses.close()


def emails(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n}@example.org" for n in range(count)]


def accepted(stub: SesStub, addresses: list[str]) -> int:
    return sum(1 for a in addresses if stub.recipients[a])


async def all_sent(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return len(found) == count and all(
        DeliveryState.parse(v).kind is Kind.SENT for v in found.values()
    )


def setup_sends(configuration_set: str, tenant: str = "") -> float:
    value: float = metrics.SETUP_SENDS.labels("sent", configuration_set, tenant)._value.get()
    return value


@pytest.mark.parametrize("mode", ["bulk", "single"])
async def test_a_paused_configuration_set_parks_its_jobs_and_the_others_keep_sending(
    redis: Any, stub: SesStub, stub_sender: Callable[..., Sender], running: Any, mode: str
) -> None:
    stub.configure(paused_configuration_sets=["held"])
    held, other, plain = emails("held", 120), emails("other", 60), emails("plain", 40)
    held_id, _ = await queue_jobs(redis, KEYS, held, configuration_set="held")
    other_id, _ = await queue_jobs(redis, KEYS, other, configuration_set="other")
    plain_id, _ = await queue_jobs(redis, KEYS, plain)  # SES_CONFIGURATION_SET: "main"
    held_before, other_before = setup_sends("held"), setup_sends("other")
    run = running(stub_sender(SEND_MODE=mode, SES_CONFIGURATION_SET="main"))

    await until(lambda: all_sent(redis, other_id, len(other)), within=15)
    await until(lambda: all_sent(redis, plain_id, len(plain)), within=15)
    assert accepted(stub, held) == 0
    parked = await redis.llen(PART.parked("configuration-set:held"))
    assert parked >= len(held) - 4, parked  # at most one waits per slot; here one per replica
    assert await redis.smembers(PART.parked_scopes) == {"configuration-set:held"}
    pause = await redis.hget(KEYS.setup_paused, "configuration-set:held")
    assert pause is not None and "configuration_set_paused" in pause
    assert await redis.hkeys(KEYS.setup_paused) == ["configuration-set:held"]

    stub.configure(paused_configuration_sets=[])  # SES resumes the set: the probe goes through
    await until(lambda: all_sent(redis, held_id, len(held)), within=15)
    await run.stop()
    for address in held + other + plain:
        assert stub.recipients[address] == 1, address
    assert await redis.llen(PART.parked("configuration-set:held")) == 0
    assert await redis.smembers(PART.parked_scopes) == set()
    assert await redis.hgetall(KEYS.setup_paused) == {}
    assert await redis.xlen(PART.sends_dead) == 0
    # every request named its message's set; the default for the message that named none
    sets = {call.get("ConfigurationSetName") for call in stub.recent}
    assert sets == {"held", "other", "main"}
    assert setup_sends("held") - held_before == len(held)
    assert setup_sends("other") - other_before == len(other)


async def test_a_paused_tenant_pauses_only_its_own_messages(
    redis: Any, stub: SesStub, stub_sender: Callable[..., Sender], running: Any
) -> None:
    """SESv2 answers SendingPausedException; on a request with a tenant it is the tenant's."""
    stub.configure(paused_tenants=["acme"])
    acme, globex, nobody = emails("acme", 80), emails("globex", 40), emails("nobody", 30)
    acme_id, _ = await queue_jobs(redis, KEYS, acme, tenant="acme")
    globex_id, _ = await queue_jobs(redis, KEYS, globex, tenant="globex")
    nobody_id, _ = await queue_jobs(redis, KEYS, nobody)
    run = running(stub_sender())

    await until(lambda: all_sent(redis, globex_id, len(globex)), within=15)
    await until(lambda: all_sent(redis, nobody_id, len(nobody)), within=15)
    assert accepted(stub, acme) == 0
    assert await redis.hkeys(KEYS.setup_paused) == ["tenant:acme"]
    assert await redis.llen(PART.parked("tenant:acme")) > 0

    stub.configure(paused_tenants=[])
    await until(lambda: all_sent(redis, acme_id, len(acme)), within=15)
    await run.stop()
    for address in acme + globex + nobody:
        assert stub.recipients[address] == 1, address
    tenants = {call.get("TenantName") for call in stub.recent}
    assert tenants == {"acme", "globex", None}


@pytest.mark.parametrize("mode", ["bulk", "single"])
async def test_ses_receives_the_configuration_set_and_tenant(
    redis: Any, stub: SesStub, stub_sender: Callable[..., Sender], running: Any, mode: str
) -> None:
    many, one = emails("many", 5), emails("one", 1)
    many_id, _ = await queue_jobs(redis, KEYS, many, configuration_set="pool-a", tenant="acme")
    one_id, _ = await queue_jobs(redis, KEYS, one, configuration_set="pool-b", tenant="globex")
    run = running(stub_sender(SEND_MODE=mode))
    await until(lambda: all_sent(redis, many_id, len(many)), within=10)
    await until(lambda: all_sent(redis, one_id, len(one)), within=10)
    await run.stop()
    calls = list(stub.recent)
    for call in calls:
        named = (call["ConfigurationSetName"], call["TenantName"])
        to = [
            address
            for entry in call.get("BulkEmailEntries", [call])
            for address in entry["Destination"]["ToAddresses"]
        ]
        expected = ("pool-a", "acme") if to[0].startswith("many") else ("pool-b", "globex")
        assert named == expected, call
    bulk = [call for call in calls if "BulkEmailEntries" in call]
    assert bool(bulk) == (mode == "bulk")

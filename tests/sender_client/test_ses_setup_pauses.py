"""A pause SES scopes to a configuration set, or a sending pause on a request with a tenant, is a
setup fault of that set or tenant (only its messages wait), with both clients, single and bulk;
an account pause stays an account pause."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sesflow.common.errors import SesPaused, SesSetupFault
from sesflow.sender.ses_boto3 import Boto3SesClient
from sesflow.sender.ses_client import BulkEmail, BulkEntry, OutgoingEmail, SesClient, scoped_pause

from support.sesstub import SesStub


def email(configuration_set: str = "", tenant: str = "") -> OutgoingEmail:
    return OutgoingEmail(
        from_email="a@example.com",
        to="b@example.org",
        subject="s",
        html="<p>h</p>",
        configuration_set=configuration_set,
        tenant=tenant,
    )


def bulk(configuration_set: str = "", tenant: str = "") -> BulkEmail:
    entries = tuple(BulkEntry(to=f"r{n}@example.org", data="{}") for n in range(2))
    return BulkEmail(
        from_email="a@example.com",
        subject="s",
        html="<p>h</p>",
        configuration_set=configuration_set,
        tenant=tenant,
        entries=entries,
    )


@pytest.mark.parametrize(
    ("code", "message", "cset", "tenant", "reason"),
    [
        ("ConfigurationSetSendingPausedException", "", "news", "", "configuration_set_paused"),
        ("CONFIGURATION_SET_SENDING_PAUSED", "", "news", "acme", "configuration_set_paused"),
        ("SendingPausedException", "configuration set x", "x", "", "configuration_set_paused"),
        ("SendingPausedException", "Sending is paused.", "news", "acme", "tenant_paused"),
        ("ACCOUNT_SENDING_PAUSED", "", "", "acme", "tenant_paused"),
        ("SendingPausedException", "Sending is paused.", "news", "", None),
        ("AccountSuspendedException", "", "news", "acme", None),
    ],
)  # fmt: skip
def test_which_pauses_are_scoped(
    code: str, message: str, cset: str, tenant: str, reason: str | None
) -> None:
    scoped = scoped_pause(SesPaused(code, message, 400), cset, tenant)
    if reason is None:
        assert type(scoped) is SesPaused
    else:
        assert isinstance(scoped, SesSetupFault) and scoped.reason == reason
        assert (scoped.code, scoped.message) == (code, message)


@pytest.mark.parametrize("kind", ["native", "boto3"])
async def test_both_clients_scope_a_paused_set_and_a_paused_tenant(
    stub: SesStub, ses_settings: Callable[..., Any], kind: str
) -> None:
    settings = ses_settings()
    client = SesClient(settings) if kind == "native" else Boto3SesClient(settings)
    stub.configure(paused_configuration_sets=["news"], paused_tenants=["acme"])
    try:
        with pytest.raises(SesSetupFault) as single:
            await client.send_email(email("news"))
        assert single.value.reason == "configuration_set_paused"
        outcomes = await client.send_bulk_email(bulk("news"))
        assert all(
            isinstance(o, SesSetupFault) and o.reason == "configuration_set_paused"
            for o in outcomes
        ), outcomes
        for call in (
            client.send_email(email(tenant="acme")),
            client.send_bulk_email(bulk("", "acme")),
        ):
            with pytest.raises(SesSetupFault) as paused:
                await call
            assert paused.value.reason == "tenant_paused"
        # another set, another tenant, no tenant: sent
        assert isinstance(await client.send_email(email("other", "globex")), str)
        assert all(isinstance(o, str) for o in await client.send_bulk_email(bulk("other")))
        stub.configure(pause_seconds=5)  # the account itself
        with pytest.raises(SesPaused) as account:
            await client.send_email(email("other"))
        assert type(account.value) is SesPaused
    finally:
        await client.close()
    sent = [(c.get("ConfigurationSetName"), c.get("TenantName")) for c in stub.recent]
    # the paused set's bulk call was answered (its entries refused); the others were refused
    assert sent == [("news", None), ("other", "globex"), ("other", None)]

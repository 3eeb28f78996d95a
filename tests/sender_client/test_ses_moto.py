"""SesClient really sends through moto's SES server: a verified identity, a SESv2 SendEmail
signed and encoded by sesflow, and the message in moto's backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

from sesflow.common.errors import SesSetupFault
from sesflow.common.settings import Settings
from sesflow.sender.ses_client import OutgoingEmail, SesClient

ACCOUNT = "123456789012"
REGION = "eu-west-1"
SENDER = "client-test@example.com"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_settings(make_settings: Callable[..., Settings], moto_url: str) -> Settings:
    return make_settings(
        SES_ENDPOINT_URL=moto_url,
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )


def ses_v1(settings: Settings) -> Any:
    return boto3.client(
        "ses",
        endpoint_url=settings.ses_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def make_email(to: str) -> OutgoingEmail:
    return OutgoingEmail(
        from_email=SENDER,
        to=to,
        subject="Through moto",
        html="<html><body><p>Hello from sesflow</p></body></html>",
        headers=(("X-Request-ID", "1732461234567-0_0"),),
        tags=(("sesflow-rid", "1732461234567-0_0"), ("sesflow-topic", "moto")),
    )


async def test_sends_through_moto_to_a_verified_identity(moto_settings: Settings) -> None:
    ses_v1(moto_settings).verify_email_identity(EmailAddress=SENDER)
    backend = ses_backends[ACCOUNT][REGION]
    before = len(backend.sent_messages)
    client = SesClient(moto_settings)
    try:
        message_id = await client.send_email(make_email("reader@example.org"))
    finally:
        await client.close()
    assert message_id
    sent = backend.sent_messages[before:]
    assert [(m.id, m.source, m.destinations, m.subject) for m in sent] == [
        (message_id, SENDER, {"ToAddresses": ["reader@example.org"]}, "Through moto")
    ]
    assert "Hello from sesflow" in sent[0].body


async def test_an_unverified_sender_from_moto_is_a_setup_fault_not_a_rejection(
    moto_settings: Settings,
) -> None:
    client = SesClient(moto_settings)
    try:
        with pytest.raises(SesSetupFault) as raised:
            await client.send_email(
                OutgoingEmail(
                    from_email="nobody-verified@example.net",
                    to="reader@example.org",
                    subject="s",
                    html="h",
                )
            )
    finally:
        await client.close()
    assert raised.value.code == "MessageRejected" and raised.value.reason == "identity"

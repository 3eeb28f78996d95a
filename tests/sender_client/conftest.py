"""Fixtures of the SES client tests: an in-process SES stub and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sesflow.common.settings import Settings
from sesflow.sender.ses_client import OutgoingEmail, SesClient

from support.sesstub import SesStub

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub() as server:
        yield server


@pytest.fixture
def ses_settings(make_settings: Callable[..., Settings], stub: SesStub) -> Callable[..., Settings]:
    def make(**env: Any) -> Settings:
        return make_settings(**{"SES_ENDPOINT_URL": stub.url, **CREDENTIALS, **env})

    return make


@pytest.fixture
async def client(ses_settings: Callable[..., Settings]) -> AsyncIterator[SesClient]:
    ses = SesClient(ses_settings(SES_TIMEOUT="2"))
    yield ses
    await ses.close()


@pytest.fixture
def make_email() -> Callable[..., OutgoingEmail]:
    def make(to: str = "someone@example.org", **changes: Any) -> OutgoingEmail:
        fields: dict[str, Any] = {
            "from_email": "sender@example.com",
            "to": to,
            "subject": "Hello",
            "html": "<p>Hi</p>",
            "headers": (("X-Request-ID", "1732461234567-0_3"),),
            "tags": (("sesflow-rid", "1732461234567-0_3"), ("sesflow-topic", "news")),
        }
        fields.update(changes)
        return OutgoingEmail(**fields)

    return make

"""Fixtures of the tracker's tests: an SNS signing identity served on loopback, and the tracker
app under aiohttp's test client, pointed at the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from sesflow.common.settings import Settings
from sesflow.tracker.app import create_app

from support.apptest import AppTestServer
from support.snssign import SnsSigner, make_key_and_cert


@pytest.fixture(scope="session")
def signing_identity() -> tuple[rsa.RSAPrivateKey, bytes]:
    return make_key_and_cert()


@pytest.fixture
async def signer(signing_identity: tuple[rsa.RSAPrivateKey, bytes]) -> AsyncIterator[SnsSigner]:
    sns = SnsSigner(identity=signing_identity)
    async with sns.serve():
        yield sns


@pytest.fixture
def tracker_settings(make_settings: Callable[..., Settings], signer: SnsSigner) -> Settings:
    return make_settings(SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn)


@pytest.fixture
def start_tracker() -> Callable[[Settings], Any]:
    """`async with start_tracker(settings) as client:` a TestClient on a fresh tracker app."""

    def start(settings: Settings) -> TestClient[Any, Any]:
        return TestClient(AppTestServer(create_app(settings)))

    return start


@pytest.fixture
async def tracker(
    tracker_settings: Settings, start_tracker: Callable[[Settings], Any]
) -> AsyncIterator[TestClient[Any, Any]]:
    async with start_tracker(tracker_settings) as client:
        yield client

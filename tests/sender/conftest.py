"""Fixtures of the sender tests: a fake SES, message seeding, and a sender run in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sesflow.common.settings import Settings
from sesflow.sender.worker import Sender

from support.senderkit import (
    SECRET,
    FakeSes,
    Running,
)


@pytest.fixture
def fake_ses() -> FakeSes:
    return FakeSes()


@pytest.fixture
def sender_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Fast defaults for in-process senders: a high rate, short reclaim and grace."""

    def make(**env: Any) -> Settings:
        base = {"EMAIL_RATE": "1000", "EMAIL_BURST": "50", "RECLAIM_IDLE": "2"}
        base.update({"SHUTDOWN_GRACE": "3", "SENDER_CONCURRENCY": "8", **env})
        return make_settings(**base)

    return make


@pytest.fixture
def make_sender(redis: Any, fake_ses: FakeSes) -> Callable[..., Sender]:
    def make(settings: Settings, ses: Any = None, client: Any = None, **kw: Any) -> Sender:
        sender = Sender(settings, client or redis, ses or fake_ses, SECRET, **kw)
        sender.ses_pause_s = 0.3
        sender.quota_pause_s = 0.3
        return sender

    return make


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Sender], Running]]:
    started: list[Running] = []

    def start(sender: Sender) -> Running:
        run = Running(sender)
        started.append(run)
        return run

    yield start
    for run in started:
        if not run.task.done():
            await run.stop()

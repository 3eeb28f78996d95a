from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.webhookkit import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()

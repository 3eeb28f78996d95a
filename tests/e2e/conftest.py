from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sesflow.cli.local_ses import LOCAL_CREDENTIALS, LocalSes

from support.procs import Cluster

SENDER = "noreply@sesflow.test"
REGION = "us-east-1"


@pytest.fixture
def moto_ses() -> Iterator[LocalSes]:
    """moto's SES on loopback, in this process, so the test can read what it received."""
    ses = LocalSes(region=REGION)
    ses.start([SENDER])
    yield ses
    ses.stop()


@pytest.fixture
def cluster(redis_url: str, moto_ses: LocalSes, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(
        redis_url,
        tmp_path / "logs",
        SES_ENDPOINT_URL=moto_ses.url,
        AWS_REGION=REGION,
        EMAIL_SENDER=SENDER,
        EMAIL_RATE="50",
        **LOCAL_CREDENTIALS,
    )
    yield c
    c.stop_all()

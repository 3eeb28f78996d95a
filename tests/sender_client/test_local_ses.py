"""The local SES endpoint of `sesflow up` (moto) speaks SendBulkEmail with inline templates: each
entry rendered as SES would, checked and kept by moto like any SendEmail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from moto.ses.models import ses_backends

from sesflow.cli.local_ses import LOCAL_CREDENTIALS, LocalSes
from sesflow.common import ses_suppressions
from sesflow.common.errors import SesRejected, SesSetupFault
from sesflow.common.keys import Keys
from sesflow.common.ses_suppressions import import_from_ses, mirror_delete, mirror_put
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList
from sesflow.sender.ses_client import BulkEmail, BulkEntry, SesClient

ACCOUNT = "123456789012"
REGION = "eu-central-1"
SENDER = "local-bulk@example.com"


@pytest.fixture(scope="module")
def local_ses() -> Iterator[LocalSes]:
    ses = LocalSes(region=REGION)
    ses.start([SENDER])
    yield ses
    ses.stop()


def bulk(source: str, *to: str) -> BulkEmail:
    return BulkEmail(
        from_email=source,
        subject="Hi {{{v0}}}",
        html="<p>Hello {{v0}}</p>",
        text="Hello {{{v0}}}",
        entries=tuple(
            BulkEntry(to=address, data=json.dumps({"v0": f"<{address[:2]}>"})) for address in to
        ),
    )


async def test_bulk_entries_are_rendered_and_sent(
    local_ses: LocalSes, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SES_ENDPOINT_URL=local_ses.url, AWS_REGION=REGION, **LOCAL_CREDENTIALS)
    backend = ses_backends[ACCOUNT][REGION]
    before = len(backend.sent_messages)
    client = SesClient(settings)
    try:
        outcomes = await client.send_bulk_email(bulk(SENDER, "ab@example.org", "not-an-address"))
        with pytest.raises(SesSetupFault) as raised:  # our identity: pause, fail nothing
            await client.send_bulk_email(bulk("unverified@example.net", "ab@example.org"))
        assert raised.value.reason == "identity"
    finally:
        await client.close()
    assert isinstance(outcomes[0], str)
    assert isinstance(outcomes[1], SesRejected) and outcomes[1].code == "INVALID_PARAMETER"
    [sent] = backend.sent_messages[before:]
    assert (sent.id, sent.subject, sent.body) == (outcomes[0], "Hi <ab>", "<p>Hello &lt;ab&gt;</p>")


async def test_the_account_suppression_list_is_imported_paged_and_mirrored(
    local_ses: LocalSes, make_settings: Callable[..., Settings], redis: Any
) -> None:
    """`sesflow up`'s SES keeps an account-level suppression list in SESv2's REST shapes, so the
    import (every page) and the API's mirroring work without an AWS account."""
    settings = make_settings(SES_ENDPOINT_URL=local_ses.url, AWS_REGION=REGION, **LOCAL_CREDENTIALS)
    await redis.delete(Keys().suppressed)
    suppressions = SuppressionList(redis, Keys())
    for n in range(3):
        await mirror_put(settings, f"Local{n}@example.org", "complaint" if n else "manual")
    assert await mirror_delete(settings, "local2@example.org")
    assert not await mirror_delete(settings, "local2@example.org")  # not there: nothing to do
    with mock.patch.object(ses_suppressions, "PAGE_SIZE", 1):
        assert await import_from_ses(settings, suppressions) == (2, 2)
    found = {s.email: s.reason for s in (await suppressions.page(0, 100))[1]}
    assert found == {"local0@example.org": "bounce", "local1@example.org": "complaint"}

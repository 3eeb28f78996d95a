"""Mailing lists and SES's account-level suppression list, end to end: real processes against
the SES stub, driven through the public HTTP APIs and the CLI.

- a one-click unsubscribe stops its list's bulk mail, and neither transactional mail nor another
  list's mail;
- with SES_SUPPRESSION_SYNC=1, SES's list (several pages) is imported by the sender's upkeep and
  by `sesflow suppressions sync`, and the API's PUT / DELETE reach SES first (a failure to
  mirror answers 502 and changes nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from sesflow.cli.local_ses import LOCAL_CREDENTIALS

from support.procs import Cluster
from support.sesstub import SesStub
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SENDER = "noreply@sesflow.test"


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub() as ses:
        yield ses


@pytest.fixture
def make_cluster(redis_url: str, stub: SesStub, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**env: str) -> Cluster:
        cluster = Cluster(
            redis_url,
            tmp_path / "logs",
            SES_ENDPOINT_URL=stub.url,
            AWS_REGION="us-east-1",
            EMAIL_SENDER=SENDER,
            EMAIL_RATE="50",
            SES_TIMEOUT="5",
            **LOCAL_CREDENTIALS,
            **env,
        )
        made.append(cluster)
        cluster.start_all(senders=1)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


async def post(http: aiohttp.ClientSession, cluster: Cluster, **message: Any) -> None:
    body = {"subject": "S", "content": "<p>x</p>", **message}
    async with http.post(f"{cluster.url('ingest')}/v1/messages", json={"messages": [body]}) as r:
        assert r.status == 202, await r.text()


async def topic_counts(http: aiohttp.ClientSession, cluster: Cluster, topic: str) -> Any:
    async with http.get(f"{cluster.url('stats')}/v1/topics/{topic}") as resp:
        return await resp.json() if resp.status == 200 else {}


async def test_a_list_unsubscribe_stops_only_that_lists_bulk_mail(
    make_cluster: Callable[..., Cluster], stub: SesStub
) -> None:
    cluster = make_cluster()
    reader = "reader@example.org"
    async with aiohttp.ClientSession() as http:
        await post(http, cluster, topic_id="june-news", emails=[reader], list="newsletter")
        await until(lambda: _mail(stub, reader, 1), within=30, context=cluster.all_logs)
        [first] = stub.mail[reader]
        assert first.headers["List-Id"] == "<newsletter.sesflow.test>"
        unsubscribe = first.headers["List-Unsubscribe"].strip("<>")
        async with http.post(unsubscribe, data="List-Unsubscribe=One-Click") as resp:
            assert resp.status == 200, await resp.text()

        # The same list again (bulk): dropped. Receipts and another list still arrive.
        await post(http, cluster, topic_id="july-news", emails=[reader], list="newsletter")
        await post(http, cluster, topic_id="receipts", emails=[reader], lane="transactional")
        await post(http, cluster, topic_id="offers", emails=[reader], list="offers")
        await until(
            lambda: topic_counts(http, cluster, "july-news"),
            lambda counts: counts.get("suppressed") == 1,
            within=30,
            context=cluster.all_logs,
        )
        await until(lambda: _mail(stub, reader, 3), within=30, context=cluster.all_logs)
        lists = sorted(m.headers.get("List-Id", "-") for m in stub.mail[reader])
        assert lists == ["-", "<newsletter.sesflow.test>", "<offers.sesflow.test>"]
        assert (await topic_counts(http, cluster, "july-news")).get("sent", 0) == 0

        # The API shows the scope; the address is not suppressed globally.
        ingest = cluster.url("ingest")
        async with http.get(f"{ingest}/v1/suppressions/{reader}") as resp:
            shown = await resp.json()
        assert (shown["global"], list(shown["scopes"]["lists"])) == (False, ["newsletter"])


async def _mail(stub: SesStub, address: str, count: int) -> bool:
    return len(stub.mail.get(address, [])) >= count


async def sesflow_cli(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    """The CLI as a process, awaited: the stub it talks to runs on this event loop."""
    env = {**cluster.env, "PATH": os.environ.get("PATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sesflow.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ses_suppression_list_is_imported_and_changes_are_mirrored(
    make_cluster: Callable[..., Cluster], stub: SesStub
) -> None:
    listed = stub.suppression_list
    listed.page_size = 2  # five addresses: three pages
    for n in range(5):
        listed.put(f"ses{n}@example.org", "COMPLAINT" if n == 0 else "BOUNCE")
    cluster = make_cluster(SES_SUPPRESSION_SYNC="1")
    ingest = cluster.url("ingest")
    async with aiohttp.ClientSession() as http:

        async def shown(email: str) -> Any:
            async with http.get(f"{ingest}/v1/suppressions/{quote(email)}") as resp:
                return await resp.json() if resp.status == 200 else None

        # The sender's upkeep imports every page at start.
        await until(lambda: shown("ses4@example.org"), within=30, context=cluster.all_logs)
        assert listed.calls.count("ListSuppressedDestinations") >= 3
        assert (await shown("ses0@example.org"))["reason"] == "complaint"
        assert (await shown("ses3@example.org"))["reason"] == "bounce"

        # An address sesflow's list holds is dropped before SES sees it.
        await post(http, cluster, topic_id="to-listed", emails=["ses1@example.org"])
        await until(
            lambda: topic_counts(http, cluster, "to-listed"),
            lambda counts: counts.get("suppressed") == 1,
            within=30,
        )
        assert "ses1@example.org" not in stub.mail

        # DELETE reaches SES first; a failure to mirror is a 502 that changes nothing.
        listed.fail_status = 500
        async with http.delete(f"{ingest}/v1/suppressions/ses2@example.org") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "ses_mirror_failed"
        assert await shown("ses2@example.org") is not None
        assert "ses2@example.org" in listed.entries
        listed.fail_status = 0
        async with http.delete(f"{ingest}/v1/suppressions/ses2@example.org") as resp:
            assert resp.status == 200, await resp.text()
        assert await shown("ses2@example.org") is None
        assert "ses2@example.org" not in listed.entries

        # PUT is mirrored too, with SES's reason.
        async with http.put(
            f"{ingest}/v1/suppressions/new@example.org", json={"reason": "complaint"}
        ) as resp:
            assert resp.status == 200
        assert listed.entries["new@example.org"][0] == "COMPLAINT"

    # The command imports what SES holds now (the one just added there by hand, too).
    listed.put("by-hand@example.org")
    code, out, err = await sesflow_cli(cluster, "suppressions", "sync", "--json")
    assert code == 0, err
    assert json.loads(out) == {"read": 6, "added": 1}

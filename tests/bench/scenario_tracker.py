"""4. Tracker: signed SNS notifications (SES Delivery events, SignatureVersion 2) verified and
recorded per second by one tracker process, from 32 concurrent clients on loopback. The signing
certificate is fetched once and cached by the tracker, as in production."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sesflow.common.keys import Keys

from bench.benchkit import cluster, http_session, redis_client, redis_server, start_role
from support.snssign import SnsSigner

PAYLOAD = Path(__file__).resolve().parents[1] / "tracker" / "payloads" / "event_delivery.json"
MSG_ID = "1732461234567-0"
CLIENTS = 32


@dataclass(frozen=True)
class Size:
    notifications: int


def notifications(signer: SnsSigner, count: int) -> list[bytes]:
    """`count` signed Delivery notifications for recipients of one message (signing is ~1 ms
    each, so they are made once and replayed against a fresh Redis in every run)."""
    base = json.loads(PAYLOAD.read_text())
    out = []
    for n in range(count):
        event: dict[str, Any] = copy.deepcopy(base)
        event["mail"]["messageId"] = f"0100-bench-{n:08d}"
        event["mail"]["tags"]["sesflow-rid"] = [f"{MSG_ID}_{n}"]
        event["mail"]["tags"]["sesflow-topic"] = ["bench"]
        out.append(json.dumps(signer.notification(event, version=2)).encode())
    return out


async def run_once(size: Size, signer: SnsSigner, bodies: list[bytes]) -> dict[str, float]:
    env = {"SNS_CERT_URL_PATTERN": signer.pattern, "SNS_TOPIC_ARNS": signer.topic_arn}
    with redis_server() as server, cluster(server.url, **env) as c:
        await start_role(c, "tracker")
        async with redis_client(server.url) as client, http_session(CLIENTS) as session:
            keys = Keys()
            await client.hset(keys.for_message(MSG_ID).message(MSG_ID), "topic", "bench")
            url = f"{c.url('tracker')}/v1/events/results"
            todo = list(reversed(bodies))
            warm = todo.pop()
            await post(session, url, warm)  # fetches and caches the certificate

            async def worker() -> None:
                while todo:
                    await post(session, url, todo.pop())

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CLIENTS)))
            elapsed = time.perf_counter() - start
            recorded = await client.xlen(keys.partition(0).events)
    if recorded != len(bodies):
        raise RuntimeError(f"{recorded} events recorded for {len(bodies)} notifications")
    return {"tracker_eps": (len(bodies) - 1) / elapsed}


async def post(session: Any, url: str, body: bytes) -> None:
    async with session.post(url, data=body, headers={"Content-Type": "text/plain"}) as resp:
        text = await resp.text()
        if resp.status != 200 or '"processed"' not in text:
            raise RuntimeError(f"tracker answered {resp.status}: {text[:300]}")

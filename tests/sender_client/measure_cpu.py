"""Client CPU per SES call: sesflow's SesClient vs a plain boto3 `sesv2.send_email` loop, both
against the local stub running in its own process (so its CPU is not counted).

    .venv/bin/python tests/sender_client/measure_cpu.py [--calls 2000] [--concurrency 1]

Prints one JSON line. Not a test: CPU numbers on a shared machine are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script: `tests/` on the path makes `support.*` importable, as under pytest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sesflow.common.aws import boto_client
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.sender.ses_client import OutgoingEmail, SesClient

from support.stubprocess import StubProcess

EMAIL = OutgoingEmail(
    from_email="sender@example.com",
    to="someone@example.org",
    subject="Measuring the client",
    html="<html><body><p>Hello</p>" + "<p>lorem ipsum dolor sit amet</p>" * 60 + "</body></html>",
    headers=(("X-Request-ID", "1732461234567-0_42"),),
    tags=(("sesflow-rid", "1732461234567-0_42"), ("sesflow-topic", "bench")),
)


async def ours(settings: Settings, calls: int, concurrency: int) -> float:
    client = SesClient(settings, max_connections=concurrency)
    try:
        for _ in range(50):  # warm up: connections, caches
            await client.send_email(EMAIL)
        per_worker = calls // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                await client.send_email(EMAIL)

        start = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - start) / (per_worker * concurrency)
    finally:
        await client.close()


def boto3_loop(settings: Settings, calls: int) -> float:
    client: Any = boto_client(settings, "sesv2", attempts=1)
    kwargs: dict[str, Any] = {
        "FromEmailAddress": EMAIL.from_email,
        "Destination": {"ToAddresses": [EMAIL.to]},
        "Content": {
            "Simple": {
                "Subject": {"Data": EMAIL.subject, "Charset": "UTF-8"},
                "Body": {"Html": {"Data": EMAIL.html, "Charset": "UTF-8"}},
                "Headers": [{"Name": n, "Value": v} for n, v in EMAIL.headers],
            }
        },
        "EmailTags": [{"Name": n, "Value": v} for n, v in EMAIL.tags],
    }
    for _ in range(50):
        client.send_email(**kwargs)
    start = time.process_time()
    for _ in range(calls):
        client.send_email(**kwargs)
    return (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    with StubProcess(keep_messages=0) as stub:
        settings = settings_from_mapping(
            {
                "SES_ENDPOINT_URL": stub.url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
        )
        ours_s = asyncio.run(ours(settings, args.calls, args.concurrency))
        boto_s = boto3_loop(settings, args.calls)
    print(
        json.dumps(
            {
                "calls": args.calls,
                "concurrency": args.concurrency,
                "sesclient_cpu_us_per_call": round(ours_s * 1e6, 1),
                "boto3_cpu_us_per_call": round(boto_s * 1e6, 1),
                "ratio": round(boto_s / ours_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

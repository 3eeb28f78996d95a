"""The SES stub as the benchmarks run it: `tests/sesstub.py` plus what the scenarios measure.

- GetAccount reports `--max-send-rate` (the plain stub reports 14/s when it enforces no rate,
  which the sender's quota upkeep would adopt as its ceiling);
- the receive time of every accepted recipient (`time.time()` when the request arrived, before
  any latency), for sliding 1-second windows;
- with `--record-rids`, the X-Request-ID of every accepted SendEmail with its receive time, for
  end-to-end latency.

    python tests/bench/bench_stub.py --port 0 [--rate 200] [--latency-ms 20] [--record-rids]

prints its URL when ready. `GET /bench/times` answers {"times": [...], "rids": {rid: time}}.
"""

from __future__ import annotations

import array
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sesstub import SesStub, parse_args


class _Header(msgspec.Struct):
    Name: str
    Value: str


class _Simple(msgspec.Struct):
    Headers: list[_Header] = []


class _Content(msgspec.Struct):
    Simple: _Simple | None = None


class _Call(msgspec.Struct):
    Content: _Content | None = None


_call_decoder = msgspec.json.Decoder(_Call)
_encoder = msgspec.json.Encoder()


def request_id(body: bytes) -> str:
    call = _call_decoder.decode(body)
    if call.Content is None or call.Content.Simple is None:
        return ""
    for header in call.Content.Simple.Headers:
        if header.Name.lower() == "x-request-id":
            return header.Value
    return ""


class BenchStub(SesStub):
    def __init__(self, *args: Any, max_send_rate: float, record_rids: bool, **config: Any) -> None:
        self.max_send_rate = max_send_rate
        self.record_rids = record_rids
        self.times = array.array("d")
        self.rids: dict[str, float] = {}
        super().__init__(*args, **config)

    async def send_email(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        response = await super().send_email(request)
        if response.status == 200:
            self.times.append(received)
            if self.record_rids:
                self.rids[request_id(await request.read())] = received
        return response

    async def get_account(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        return self._json(
            {
                "DedicatedIpAutoWarmupEnabled": False,
                "EnforcementStatus": "HEALTHY",
                "ProductionAccessEnabled": True,
                "SendQuota": {
                    "Max24HourSend": config.max_24h,
                    "MaxSendRate": config.rate or self.max_send_rate,
                    "SentLast24Hours": float(self.sent),
                },
                "SendingEnabled": True,
            }
        )

    async def times_handler(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=_encoder.encode({"times": self.times.tolist(), "rids": self.rids}),
            content_type="application/json",
        )

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/bench/times", self.times_handler)
        return app


async def serve(argv: list[str]) -> None:
    extra = [a for a in argv if a == "--record-rids"]
    rest = [a for a in argv if a != "--record-rids"]
    max_rate = 1_000_000.0
    if "--max-send-rate" in rest:
        at = rest.index("--max-send-rate")
        max_rate = float(rest[at + 1])
        del rest[at : at + 2]
    args = parse_args(rest)
    stub = BenchStub(
        args.host,
        args.port,
        max_send_rate=max_rate,
        record_rids=bool(extra),
        latency_ms=args.latency_ms,
        rate=args.rate,
        burst=args.burst,
        keep_messages=0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with stub:
        print(stub.url, flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))

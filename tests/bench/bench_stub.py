"""The SES stub as the benchmarks run it: `tests/sesstub.py` plus what the scenarios measure.

- GetAccount reports `--max-send-rate` (the plain stub reports 14/s when it enforces no rate,
  which the sender's quota upkeep would adopt as its ceiling);
- the receive time of every accepted recipient (`time.time()` when the request arrived, before
  any latency), for sliding 1-second windows;
- with `--record-rids`, the X-Request-ID of every accepted recipient (SendEmail headers, or a
  SendBulkEmail entry's ReplacementHeaders) with its receive time, for end-to-end latency.
It keeps no rendered mail (`keep_mail` off): the benchmarks count, they do not read mail.

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


class _Entry(msgspec.Struct):
    ReplacementHeaders: list[_Header] = []


class _Call(msgspec.Struct):
    Content: _Content | None = None
    BulkEmailEntries: list[_Entry] = []


_call_decoder = msgspec.json.Decoder(_Call)
_encoder = msgspec.json.Encoder()


def _rid(headers: list[_Header]) -> str:
    for header in headers:
        if header.Name.lower() == "x-request-id":
            return header.Value
    return ""


def request_ids(body: bytes) -> list[str]:
    """The X-Request-ID of every recipient of a SendEmail or SendBulkEmail call."""
    call = _call_decoder.decode(body)
    if call.BulkEmailEntries:
        return [_rid(entry.ReplacementHeaders) for entry in call.BulkEmailEntries]
    if call.Content is None or call.Content.Simple is None:
        return [""]
    return [_rid(call.Content.Simple.Headers)]


class BenchStub(SesStub):
    def __init__(self, *args: Any, max_send_rate: float, record_rids: bool, **config: Any) -> None:
        self.max_send_rate = max_send_rate
        self.record_rids = record_rids
        self.times = array.array("d")
        self.rids: dict[str, float] = {}
        super().__init__(*args, **config)

    async def _timed(self, request: web.Request, handler: Any) -> web.StreamResponse:
        received = time.time()
        before = self.sent
        response: web.StreamResponse = await handler(request)
        self.times.extend([received] * (self.sent - before))
        if response.status == 200 and self.record_rids:
            for rid in request_ids(await request.read()):
                self.rids[rid] = received
        return response

    async def send_email(self, request: web.Request) -> web.StreamResponse:
        return await self._timed(request, super().send_email)

    async def send_bulk_email(self, request: web.Request) -> web.StreamResponse:
        return await self._timed(request, super().send_bulk_email)

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
        keep_mail=False,
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

"""The SES stub as the benchmarks run it: `support.sesstub` plus what the scenarios measure.

- GetAccount reports `--max-send-rate` (default here 1,000,000/s: the plain stub reports 14/s
  when it enforces no rate, which the sender's quota upkeep would adopt as its ceiling);
- the receive time of every accepted recipient (`time.time()` when the request arrived, before
  any latency), for sliding 1-second windows;
- with `--record-rids`, the X-Request-ID of every accepted recipient (SendEmail headers, or a
  SendBulkEmail entry's ReplacementHeaders) with its receive time, for end-to-end latency.
It keeps no rendered mail (`keep_mail` off): the benchmarks count, they do not read mail.

    cd tests && python -m bench.bench_stub --port 0 [--rate 200] [--latency-ms 20] [--record-rids]

prints its URL when ready. `GET /bench/times` answers {"times": [...], "rids": {rid: time}}.
"""

from __future__ import annotations

import array
import asyncio
import sys
import time
from typing import Any

import msgspec
from aiohttp import web

from support.sesstub import SesStub, build_parser, config_from_args, serve


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
    """The stub, recording when each accepted recipient's request arrived (and its request id)."""

    def __init__(self, *args: Any, record_rids: bool = False, **config: Any) -> None:
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

    async def times_handler(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=_encoder.encode({"times": self.times.tolist(), "rids": self.rids}),
            content_type="application/json",
        )

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/bench/times", self.times_handler)
        return app


def main(argv: list[str]) -> None:
    parser = build_parser()
    parser.add_argument("--record-rids", action="store_true")
    # The benchmarks count, they do not read mail; an unthrottled stub reports a rate no sender
    # reaches, so the sender's quota upkeep does not make 14/s its ceiling.
    parser.set_defaults(keep_messages=0, keep_mail=False, max_send_rate=1_000_000.0)
    args = parser.parse_args(argv)
    stub = BenchStub(args.host, args.port, record_rids=args.record_rids, **config_from_args(args))
    asyncio.run(serve(stub, args))


if __name__ == "__main__":
    main(sys.argv[1:])

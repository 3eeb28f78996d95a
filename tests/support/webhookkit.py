"""A real webhook receiver for the tests: aiohttp on a free loopback port. It verifies every
delivery with the `standardwebhooks` reference library (a delivery that fails verification is
recorded as forged and answered 400), can be taken down (answering 503) and brought back, and
records what arrived by `webhook-id`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sesflow.cli.embedded import free_port


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=list)  # any one verifying is enough
    down: bool = False
    status: int = 200  # answered to verified deliveries while up
    received: dict[str, Any] = field(default_factory=dict)  # webhook-id -> payload
    seen: Counter[str] = field(default_factory=Counter)  # webhook-id -> verified arrivals
    refused: int = 0  # answered 503 while down
    forged: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def verify(self, body: bytes, headers: dict[str, str]) -> Any:
        if not self.secrets:
            raise AssertionError("the receiver has no secret to verify with")
        for secret in self.secrets:
            try:
                return Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
        raise WebhookVerificationError("no secret verifies it")

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            self.refused += 1
            return web.Response(status=503)
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = self.verify(body, headers)
        except WebhookVerificationError:
            self.forged += 1
            return web.Response(status=400)
        wid = headers["webhook-id"]
        self.headers.append(headers)
        self.received[wid] = payload
        self.seen[wid] += 1
        return web.Response(status=self.status, text=json.dumps({"ok": True}))

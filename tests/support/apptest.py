"""aiohttp's TestServer with the runner every sesflow process serves through, so that tests see
the answers real clients get, including the errors aiohttp's HTTP parser answers itself."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from sesflow.common.http import JsonAppRunner


class AppTestServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return JsonAppRunner(self.app, **kwargs)

"""Headless Chromium driven over its DevTools protocol with aiohttp's websocket client: enough to
load a page, wait for something on it, read values and take a screenshot. No browser driver
package needed, only Debian's `chromium`.

    async with Chromium.launch() as browser:
        await browser.navigate("http://127.0.0.1:3002/")
        await browser.wait_for("document.querySelector('[data-state=live]') !== null")
        values = await browser.evaluate("...")
        await browser.screenshot(path)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from support.until import until

# Required to run as root in a container; the rest keep Chromium off the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks one and writes it to DevToolsActivePort
)


def find_chromium() -> str | None:
    """SESFLOW_CHROMIUM (a path) when set, else the first browser on PATH or Debian's."""
    chosen = os.environ.get("SESFLOW_CHROMIUM")
    if chosen is not None:
        return chosen if Path(chosen).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class CdpError(RuntimeError):
    pass


class Chromium:
    def __init__(
        self, proc: asyncio.subprocess.Process, profile: Path, http: aiohttp.ClientSession
    ) -> None:
        self.proc = proc
        self.profile = profile
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)
        self.calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls, binary: str, width: int = 1360, height: int = 900
    ) -> AsyncIterator[Chromium]:
        profile = Path(tempfile.mkdtemp(prefix="sesflow-chromium-"))
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        http = aiohttp.ClientSession()
        browser = cls(proc, profile, http)
        try:
            await browser._attach(width, height)
            yield browser
        finally:
            await browser._close()

    async def _attach(self, width: int, height: int) -> None:
        port = await self._devtools_port()
        base = f"http://127.0.0.1:{port}"
        async with self.http.put(f"{base}/json/new?about:blank") as resp:
            target = await resp.json()
        self.ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    async def _devtools_port(self, within: float = 20.0) -> int:
        marker = self.profile / "DevToolsActivePort"

        async def port() -> int:
            if self.proc.returncode is not None:
                raise CdpError(f"chromium exited with {self.proc.returncode}")
            return int(marker.read_text().split()[0])

        return await until(
            port,
            what="chromium's DevTools port",
            within=within,
            ignore=(FileNotFoundError, ValueError, IndexError),
        )

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.calls.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.put_nowait(data)
        for future in self.calls.values():
            if not future.done():
                future.set_exception(CdpError("DevTools connection closed"))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.ws is not None
        call_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.calls[call_id] = future
        await self.ws.send_str(
            json.dumps({"id": call_id, "method": method, "params": params or {}})
        )
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def navigate(self, url: str, within: float = 15.0) -> None:
        while not self.events.empty():
            self.events.get_nowait()
        reply = await self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {reply['errorText']}")
        deadline = time.monotonic() + within
        while True:
            event = await asyncio.wait_for(self.events.get(), deadline - time.monotonic())
            if event["method"] == "Page.loadEventFired":
                return

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        reply = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression[:80]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, within: float = 10.0) -> Any:
        """Evaluate until truthy; returns that value."""
        return await until(
            lambda: self.evaluate(expression), what=expression, within=within, every=0.1
        )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        size = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        reply = await self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(reply["data"]))
        return path

    async def _close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.http.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

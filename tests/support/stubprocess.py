"""The SES stub as its own OS process.

A stub in its own process has its own clock and event loop: a test that blocks, waits for a
process or stops Redis never delays an SES answer (which a sender would see as a timeout), and a
busy test loop cannot bunch the calls the stub admits (which would show as 429s). Knobs go through
POST /stub/control, counts come from GET /stub/stats.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from support import TESTS

Option = float | int | str | bool


def option_args(options: dict[str, Option]) -> list[str]:
    """`rate=7, keep_mail=False, record_rids=True` -> `--rate 7 --keep-mail false --record-rids`."""
    args: list[str] = []
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif value is False:
            args += [flag, "false"]
        else:
            args += [flag, str(value)]
    return args


class StubProcess:
    """`python -m <module> --port 0 <options>` run from `tests/`; `module` is `support.sesstub`
    or a module that extends it (the benchmarks' recording stub). The stub prints its URL on one
    line when it is ready. Its stderr goes to `log_dir/sesstub.log` when a `log_dir` is given."""

    def __init__(
        self, log_dir: Path | None = None, *, module: str = "support.sesstub", **options: Option
    ) -> None:
        self.module = module
        self.options = options
        self.log_path = log_dir / "sesstub.log" if log_dir is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 15.0) -> StubProcess:
        args = [sys.executable, "-m", self.module, "--port", "0", *option_args(self.options)]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=TESTS)
        else:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=TESTS)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"SES stub did not start: {line!r}\n{self.logs()}")
        self.url = line
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit code (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> StubProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def control(self, **changes: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/stub/control", json=changes) as resp,
        ):
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def stats(self, recipients: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = await self.get(
            "/stub/stats" + ("?recipients=1" if recipients else "")
        )
        return data

"""`sesflow up`: every role as its own OS process, restarted if it dies, stopped cleanly."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from sesflow.common.logs import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, preexec_fn=stop_with_parent
        )
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts children, restarts a crashed one with backoff, stops all with a grace period."""

    def __init__(self, children: list[Child], grace: float) -> None:
        self.children = children
        self.grace = grace
        self.stopping = threading.Event()

    def start(self) -> None:
        for child in self.children:
            child.start()

    def watch(self, poll: float = 0.5) -> None:
        """Run until `stopping` is set (by a signal); restart children that exit meanwhile."""
        while not self.stopping.wait(poll):
            now = time.monotonic()
            for child in self.children:
                if child.running or child.proc is None:
                    continue
                if child.next_start == 0.0:
                    code = child.proc.returncode
                    # A child that ran a while gets a quick restart; a crash loop backs off.
                    uptime = now - child.started_at
                    child.restarts = 0 if uptime > 30 else child.restarts + 1
                    delay = min(0.5 * 2**child.restarts, 10.0)
                    child.next_start = now + delay
                    log.warning(
                        "process exited, restarting", role=child.name, code=code, delay=delay
                    )
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.start()

    def stop(self) -> None:
        for child in self.children:
            if child.running and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process did not stop in time, killing", role=child.name)
                child.proc.kill()
                child.proc.wait()


def stop_with_parent() -> None:
    """In the child, before exec: get SIGTERM when `sesflow up` dies, even by SIGKILL, so no
    orphaned role keeps its port (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def stop_on_signals(supervisor: Supervisor) -> None:
    def handler(signum: int, frame: object) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

"""Run sesflow roles as real OS processes for end-to-end and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sesflow.cli.embedded import free_port, port_open

from support import ROOT
from support.until import until_sync


class RoleProcess:
    """One role (`python -m sesflow.<role>`) with its own environment; logs go to a file."""

    def __init__(self, role: str, env: dict[str, str], log_dir: Path, name: str = "") -> None:
        self.role = role
        self.name = name or role
        self.env = env
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RoleProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"sesflow.{self.role}"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0, signalled: bool = False) -> int | None:
        """SIGTERM (unless already sent), then wait; SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if not signalled:
            self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Every role of one sesflow deployment, on free loopback ports."""

    def __init__(self, redis_url: str, log_dir: Path, **env: str) -> None:
        self.ports = {
            "ingest": free_port(),
            "tracker": free_port(),
            "stats": free_port(),
        }
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SES_"))},
            "REDIS_URL": redis_url,
            "INGEST_PORT": str(self.ports["ingest"]),
            "TRACKER_PORT": str(self.ports["tracker"]),
            "STATS_PORT": str(self.ports["stats"]),
            "SERVER_URL": f"http://127.0.0.1:{self.ports['tracker']}",
            "TRACKING_SECRET": "e2e-tracking-secret",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "STATS_FLUSH_INTERVAL": "0.2",
            "SHUTDOWN_GRACE": "5",
            "PYTHONUNBUFFERED": "1",
            # The SQLite archive of this deployment, not the repository's `.sesflow/`.
            "SESFLOW_DATA_DIR": str(log_dir / "data"),
            **env,
        }
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[RoleProcess] = []

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    def start(self, role: str, name: str = "", **env: str) -> RoleProcess:
        if role == "sender":
            env.setdefault("SENDER_METRICS_PORT", str(free_port()))
        proc = RoleProcess(role, {**self.env, **env}, self.log_dir, name).start()
        self.procs.append(proc)
        return proc

    def start_all(self, senders: int = 1) -> None:
        for role in ("ingest", "tracker", "stats"):
            self.start(role)
        for n in range(senders):
            self.start("sender", name=f"sender-{n}")
        self.wait_listening()

    def wait_listening(self, roles: Iterable[str] = (), timeout: float = 30.0) -> None:
        """Until every HTTP role (or those named) accepts connections; fails at once, with the
        logs, when a role has exited."""
        ports = [self.ports[role] for role in roles] or list(self.ports.values())

        def listening() -> bool:
            dead = [p.name for p in self.procs if not p.running]
            if dead:
                raise RuntimeError(f"roles exited: {dead}\n{self.all_logs()}")
            return all(port_open("127.0.0.1", port) for port in ports)

        until_sync(
            listening, what=f"roles listening on {ports}", within=timeout, context=self.all_logs
        )

    def stop_all(self) -> dict[str, int | None]:
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        return {proc.name: proc.stop(signalled=True) for proc in self.procs}

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.logs()[-4000:]}" for p in self.procs)


def moto_sent(region: str = "us-east-1") -> list[Any]:
    """Every message moto's SES (running in this process) accepted."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return list(ses_backends[DEFAULT_ACCOUNT_ID][region].sent_messages)

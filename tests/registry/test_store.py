"""RedisRegistry on a real Redis: numbering, promotion, alias history, listings."""

from __future__ import annotations

import threading
import time

import pytest

from clreg.registry.errors import Conflict, NotFound
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry

SPEC = InputSpec(channels=1, height=16, width=16, classes=10)
ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _model(reg: RedisRegistry, name: str = "m") -> Model:
    model = Model(name=name, factory="clreg.learner.models:small_cnn", input=SPEC)
    reg.create_model(model)
    return model


def _version(reg: RedisRegistry, model: str = "m", parent: int | None = None) -> ModelVersion:
    return reg.register_version(ModelVersion(model=model, number=1, lineage=Lineage(parent=parent)))


def test_concurrent_writers_get_numbers_without_gaps(registry: RedisRegistry, store_cfg) -> None:
    _model(registry)
    numbers: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        reg = RedisRegistry(store_cfg)  # one connection per writer, like separate daemons
        for _ in range(25):
            n = _version(reg).number
            with lock:
                numbers.append(n)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 201))
    assert [v.version.number for v in registry.list_versions("m")] == list(range(1, 201))


def test_promote_moves_alias_and_records_history(registry: RedisRegistry) -> None:
    _model(registry)
    v1, v2 = _version(registry), _version(registry, parent=1)
    registry.promote("m", v1.number, who="daemon", reason="first")
    change = registry.promote("m", v2.number, who="ops", reason="better")
    assert (change.from_version, change.to_version, change.who) == (1, 2, "ops")
    assert registry.resolve("m") == 2
    assert registry.status("m", 1) is VersionStatus.BLESSED
    assert registry.status("m", 2) is VersionStatus.PRODUCTION
    views = registry.list_versions("m")
    assert [v.aliases for v in views] == [[], ["production"]]


def test_version_by_alias_reads_the_record_the_alias_points_at(registry: RedisRegistry) -> None:
    _model(registry)
    assert registry.version_by_alias("m") is None  # no alias yet
    v1, v2 = _version(registry), _version(registry, parent=1)
    registry.promote("m", v1.number, who="daemon", reason="first")
    assert registry.version_by_alias("m") == v1
    registry.promote("m", v2.number, who="daemon", reason="second")
    registry.promote("m", v1.number, who="ops", reason="canary", alias="canary")
    assert registry.version_by_alias("m") == registry.get_version("m", 2) == v2
    assert registry.version_by_alias("m", "canary") == v1
    assert registry.version_by_alias("m", "nightly") is None
    with pytest.raises(ValueError):
        registry.version_by_alias("../m")


def test_rejected_or_archived_version_is_never_promoted(registry: RedisRegistry) -> None:
    _model(registry)
    v1, v2 = _version(registry), _version(registry)
    registry.set_status("m", v2.number, VersionStatus.REJECTED)
    with pytest.raises(Conflict, match="rejected"):
        registry.promote("m", v2.number, who="ops", reason="try")
    registry.promote("m", v1.number, who="ops", reason="ok")
    with pytest.raises(Conflict, match="holds alias"):
        registry.set_status("m", v1.number, VersionStatus.ARCHIVED)
    assert registry.resolve("m") == 1


def test_alias_history_answers_production_at_time_t(registry: RedisRegistry) -> None:
    _model(registry)
    for _ in range(5):
        _version(registry)
    times: list[tuple[float, int]] = []
    for i in range(20):
        target = i % 5 + 1
        change = registry.promote("m", target, who="ops", reason=f"move {i}")
        times.append((change.at, target))
        time.sleep(0.002)
    assert registry.alias_at("m", times[0][0] - 1) is None
    for at, target in times:
        assert registry.alias_at("m", at) == target
        assert registry.alias_at("m", at + 0.001) == target
    assert len(registry.alias_history("m")) == 20


def test_versions_are_immutable_records_with_status_apart(registry: RedisRegistry) -> None:
    _model(registry)
    v = _version(registry)
    before = registry.r.get(registry.key("model", "m", "v", v.number))
    registry.set_status("m", v.number, VersionStatus.BLESSED, gate_report_id="g-m-1")
    registry.promote("m", v.number, who="daemon", reason="gate")
    assert registry.r.get(registry.key("model", "m", "v", v.number)) == before
    assert registry.list_versions("m")[0].gate_report_id == "g-m-1"


def test_unknown_names_raise_not_found_and_bad_names_are_refused(registry: RedisRegistry) -> None:
    with pytest.raises(NotFound):
        registry.get_model("nope")
    with pytest.raises(ValueError, match="invalid name"):
        registry.get_model("../etc")
    _model(registry)
    with pytest.raises(Conflict):
        _model(registry)


def test_events_alerts_and_ingest_queue_resume(registry: RedisRegistry) -> None:
    _model(registry)
    log = EventLog(registry)
    log.append("m", "batch.received", batch="b")
    log.append("m", "drift.alert", site="s")
    assert [e.kind for e in log.read("m")] == ["batch.received", "drift.alert"]
    assert [e.kind for e in log.alerts()] == ["drift.alert"]
    queue = IngestQueue(registry)
    queue.ensure_group()
    queue.push("m", "a" * 64)
    first = queue.read(block_ms=10)
    assert [(m, b) for _, m, b in first] == [("m", "a" * 64)]
    # not acked: a restarted consumer sees it again among its pending entries
    again = IngestQueue(registry).read(pending=True)
    assert [i for i, _, _ in again] == [first[0][0]]
    queue.ack(first[0][0])
    assert queue.read(pending=True) == []


def test_production_holder_keeps_its_status_until_the_alias_moves(registry: RedisRegistry) -> None:
    _model(registry)
    v1, v2 = _version(registry), _version(registry)
    registry.promote("m", v1.number, who="ops", reason="first")
    with pytest.raises(Conflict, match="holds alias 'production'"):
        registry.set_status("m", v1.number, VersionStatus.CANDIDATE)
    registry.set_status("m", v1.number, VersionStatus.BLESSED, gate_report_id="g-m-1")  # a late gate verdict
    assert registry.status("m", 1) is VersionStatus.PRODUCTION
    assert registry.list_versions("m")[0].gate_report_id == "g-m-1"
    registry.promote("m", v2.number, who="ops", reason="second")
    registry.set_status("m", v1.number, VersionStatus.REJECTED)
    assert (registry.status("m", 1), registry.status("m", 2)) == (VersionStatus.REJECTED, VersionStatus.PRODUCTION)


def test_a_models_keys_share_one_slot_on_a_cluster_and_keep_their_names_on_one_redis(registry: RedisRegistry,
                                                                                       backend: str) -> None:
    from redis.crc import key_slot

    from clreg.registry.leases import Lease

    _model(registry)
    lease = Lease(registry, "m")
    assert lease.acquire()
    registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()), fence=lease.fence())
    registry.promote("m", 1, who="ops", reason="slots", fence=lease.fence())
    EventLog(registry).append("m", "gate.failed", version=1)
    keys = {k for k in registry.r.scan_iter() if k.startswith("clreg-test:")}
    if backend == "cluster":
        of_model = {k for k in keys if k.startswith("clreg-test:{model:m}")}
        assert {"clreg-test:{model:m}", "clreg-test:{model:m}:lock", "clreg-test:{model:m}:events",
                "clreg-test:{model:m}:aliases", "clreg-test:{model:m}:v:1"} <= of_model
        assert len({key_slot(k.encode()) for k in of_model}) == 1
        assert keys - of_model == {"clreg-test:models", "clreg-test:serving:generation", "clreg-test:alerts"}
    else:  # the names existing deployments have
        assert {"clreg-test:model:m", "clreg-test:lock:m", "clreg-test:events:m", "clreg-test:model:m:aliases",
                "clreg-test:model:m:v:1", "clreg-test:models", "clreg-test:serving:generation",
                "clreg-test:alerts"} <= keys
    lease.release()

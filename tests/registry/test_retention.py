"""Retention archives old candidates and rejected versions and prunes only artifacts nothing kept uses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog
from clreg.registry.leases import Lease
from clreg.registry.records import (
    AliasChange,
    Batch,
    InputSpec,
    Lineage,
    Model,
    ModelVersion,
    VersionStatus,
    VersionView,
)
from clreg.registry.retention import Retention, RetentionConfig, select
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)

POLICY = RetentionConfig(keep_last=3, protect_promotions=2, min_age_s=0)
WIDE = POLICY.model_copy(update={"statuses": frozenset({VersionStatus.CANDIDATE, VersionStatus.REJECTED,
                                                        VersionStatus.BLESSED})})


def _view(n: int, status: VersionStatus, aliases: list[str] | None = None, created_at: float = 0.0) -> VersionView:
    version = ModelVersion(model="m", number=n, lineage=Lineage(), created_at=created_at)
    return VersionView(version=version, status=status, aliases=aliases or [])


def _change(frm: int | None, to: int) -> AliasChange:
    return AliasChange(model="m", alias="production", from_version=frm, to_version=to, who="t", reason="r")


def test_select_keeps_newest_aliased_recently_promoted_young_and_other_statuses() -> None:
    c, r, b = VersionStatus.CANDIDATE, VersionStatus.REJECTED, VersionStatus.BLESSED
    views = [_view(1, c), _view(2, r), _view(3, b), _view(4, c, ["canary"]), _view(5, c), _view(6, r),
             _view(7, c, created_at=95.0), _view(8, c), _view(9, c), _view(10, c)]
    history = [_change(5, 6)]
    assert select(views, history, POLICY.model_copy(update={"min_age_s": 10}), at=100.0) == [1, 2]
    assert select(views, [], POLICY, at=100.0) == [1, 2, 5, 6, 7]
    blessed_too = POLICY.model_copy(update={"statuses": frozenset({c, r, b})})
    assert select(views, [], blessed_too, at=100.0) == [1, 2, 3, 5, 6, 7]


def test_config_never_archives_production_or_archived() -> None:
    with pytest.raises(ValidationError, match="retention can archive only"):
        RetentionConfig(statuses=frozenset({VersionStatus.PRODUCTION}))


@pytest.fixture
def setup(registry: RedisRegistry, tmp_path: Path) -> tuple[RedisRegistry, ArtifactStore, dict[int, str]]:
    """v1..v12, each with its own weights except v3 == v10, all sharing one empty `ewc` blob; promotions
    1, 2, 5, 8 (history: None->1, 1->2, 2->5, 5->8); v4 and v6 rejected; v9's weights are a batch's bytes."""
    store = ArtifactStore(str(tmp_path / "artifacts"))
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    batch_bytes = b"batch npz bytes"
    batch_id = store.put(batch_bytes)
    registry.batches.add(Batch(id=batch_id, model="m", site="s", samples=1, class_counts=[1], train_index=[0],
                             heldout_index=[], artifact=batch_id))
    weights: dict[int, str] = {}
    for n in range(1, 13):
        data = b"weights-3" if n == 10 else batch_bytes if n == 9 else f"weights-{n}".encode()
        weights[n] = store.put(data)
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage(parent=n - 1 or None),
                                               artifacts={"weights": weights[n], "ewc": store.put(b"")}))
    for n in (4, 6):
        registry.set_status("m", n, VersionStatus.REJECTED)
    for n in (1, 2, 5, 8):
        registry.promote("m", n, who="ops", reason="test")
    return registry, store, weights


def test_run_archives_by_policy_and_prunes_only_unshared_artifacts(setup) -> None:
    registry, store, weights = setup
    report = Retention(registry, store, WIDE).run()

    # v2 and v5 are blessed but in the last two promotions; v1's promotion is older: archived
    assert report.archived == {"m": [1, 3, 4, 6, 7, 9]} and report.skipped == []
    # v3's bytes are v10's and v9's are a batch's: both stay
    assert report.pruned == sorted(weights[n] for n in (1, 4, 6, 7))
    statuses = {v.version.number: v.status for v in registry.list_versions("m")}
    assert [n for n, s in statuses.items() if s is VersionStatus.ARCHIVED] == [1, 3, 4, 6, 7, 9]
    assert statuses[8] is VersionStatus.PRODUCTION and statuses[2] is statuses[5] is VersionStatus.BLESSED
    for n, digest in weights.items():
        assert store.exists(digest) == (n not in (1, 4, 6, 7))
    for view in registry.list_versions("m"):
        if view.status is not VersionStatus.ARCHIVED:
            for digest in view.version.artifacts.values():
                store.get(digest)  # every kept version still loads, verified
    assert registry.get_version("m", 4).lineage.parent == 3  # records stay readable for audit
    with pytest.raises(Conflict, match="archived"):
        registry.promote("m", 9, who="ops", reason="too late")
    assert [e.data["versions"] for e in EventLog(registry).read("m") if e.kind == "retention.archived"] == \
        [[1, 3, 4, 6, 7, 9]]

    again = Retention(registry, store, WIDE).run()
    assert (again.archived, again.pruned) == ({"m": []}, [])


def test_young_versions_and_a_running_update_are_left_alone(setup) -> None:
    registry, store, weights = setup
    young = Retention(registry, store, POLICY.model_copy(update={"min_age_s": 3600})).run(at=time.time())
    assert young.archived == {"m": []} and young.pruned == []

    update = Lease(registry, "m")
    assert update.acquire()
    busy = Retention(registry, store, POLICY).run()
    assert (busy.archived, busy.pruned, busy.skipped) == ({}, [], ["m"])
    assert all(store.exists(d) for d in weights.values())
    update.release()
    assert Retention(registry, store, POLICY).run().archived == {"m": [3, 4, 6, 7, 9]}
    assert Lease(registry, "m").acquire()  # retention released the update lease it held


def test_archive_refuses_a_version_whose_status_moved_since_the_plan(setup) -> None:
    registry, _, _ = setup
    registry.set_status("m", 7, VersionStatus.BLESSED)
    with pytest.raises(Conflict, match="no longer"):
        registry.set_status("m", 7, VersionStatus.ARCHIVED, expect=POLICY.statuses)
    assert registry.status("m", 7) is VersionStatus.BLESSED

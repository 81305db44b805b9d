"""The one promote(): gates respected unless forced, never-served versions refused, a lost lease writes nothing."""

from __future__ import annotations

import pytest

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.errors import Conflict, LeaseLost, NotFound
from clreg.registry.events import EventLog
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.leases import Lease
from clreg.registry.promotion import promote
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


@pytest.fixture
def two(registry: RedisRegistry) -> RedisRegistry:
    """Model m with version 1 blessed and version 2 a candidate."""
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    for _ in range(2):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    registry.set_status("m", 1, VersionStatus.BLESSED)
    return registry


def moves(registry: RedisRegistry) -> list[tuple[int, bool]]:
    return [(e.data["to"], e.data["forced"]) for e in EventLog(registry).read("m") if e.kind == "alias.moved"]


def test_a_blessed_version_moves_production_with_its_event(two: RedisRegistry) -> None:
    change = promote(two, EventLog(two), "m", 1, who="ops", reason="first")
    assert (change.from_version, change.to_version, change.who) == (None, 1, "ops")
    assert two.resolve("m") == 1 and moves(two) == [(1, False)]


def test_a_candidate_needs_force_and_the_event_says_so(two: RedisRegistry) -> None:
    with pytest.raises(Conflict, match="version 2 is candidate: it has not passed the gates"):
        promote(two, EventLog(two), "m", 2, who="ops", reason="skip the gate")
    assert two.resolve("m") is None and moves(two) == [] and two.alias_history("m") == []
    promote(two, EventLog(two), "m", 2, who="ops", reason="hotfix", force=True)
    assert two.resolve("m") == 2 and moves(two) == [(2, True)]


def test_never_served_and_unknown_versions_are_refused(two: RedisRegistry) -> None:
    two.set_status("m", 2, VersionStatus.REJECTED)
    with pytest.raises(Conflict, match="can never be served"):
        promote(two, EventLog(two), "m", 2, who="ops", reason="x", force=True)
    with pytest.raises(NotFound):
        promote(two, EventLog(two), "m", 9, who="ops", reason="x")
    with pytest.raises(NotFound):
        promote(two, EventLog(two), "nobody", 1, who="ops", reason="x")
    assert moves(two) == []


def test_a_lost_lease_writes_nothing(two: RedisRegistry) -> None:
    lease = Lease(two, "m")
    assert lease.acquire()
    fence = lease.fence()
    two.r.set(fence[0], "someone else")
    with pytest.raises(LeaseLost):
        promote(two, EventLog(two), "m", 1, who="daemon", reason="gate", fence=fence)
    assert two.resolve("m") is None and moves(two) == []


def _fit(low: float) -> SiteCalibration:
    return SiteCalibration(temperature=1.0, samples=100, ece=0.1, ece_calibrated=0.04, nll=0.3, nll_calibrated=0.3,
                           accuracy=low + 0.05, accuracy_interval=(low, low + 0.1))


def test_a_move_that_changes_a_site_readiness_raises_its_alert(registry: RedisRegistry, tmp_path) -> None:  # noqa: ANN001
    store = ArtifactStore(str(tmp_path))
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    for sites in ({"a": 0.9, "b": 0.6}, {"a": 0.9, "b": 0.85, "c": 0.5}):
        cal = Calibration(model="m", sites={s: _fit(low) for s, low in sites.items()}, pooled=_fit(0.9))
        stored = {"calibration": store.put(cal.model_dump_json().encode())}
        v = registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage(sites=list(sites)),
                                                   artifacts=stored))
        registry.set_status("m", v.number, VersionStatus.BLESSED)
    events = EventLog(registry)

    def readiness() -> list[tuple[str, bool, bool | None]]:
        found = [e for e in events.read("m") if e.kind == "site.readiness"]
        return sorted((e.data["site"], e.data["validated"], e.data["was"]) for e in found)

    promote(registry, events, "m", 1, who="ops", reason="first", artifacts=store)
    assert readiness() == [("a", True, None), ("b", False, None)]  # first served: each site's state is news
    promote(registry, events, "m", 2, who="ops", reason="better at b", artifacts=store)
    assert readiness()[2:] == [("b", True, False), ("c", False, None)]  # a unchanged: no alert
    assert {e.kind for e in events.alerts()} >= {"site.readiness"}

"""Listing versions by status, learnt site, parent and creation time; every listing shows aliases."""

from __future__ import annotations

import pytest

from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)

T0 = 1_700_000_000.0


@pytest.fixture
def populated(registry: RedisRegistry) -> RedisRegistry:
    """v1 (a) <- v2 (a,b) <- v3 (a,b,c); v2 <- v4 (a,b); v4 <- v5 (a,b,d); one version per hour from T0."""
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    lineage = [(None, ["a"]), (1, ["a", "b"]), (2, ["a", "b", "c"]), (2, ["a", "b"]), (4, ["a", "b", "d"])]
    for i, (parent, sites) in enumerate(lineage):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage(parent=parent, sites=sites),
                                               created_at=T0 + 3600 * i))
    registry.set_status("m", 3, VersionStatus.REJECTED)
    registry.promote("m", 2, who="ops", reason="first")
    registry.promote("m", 4, who="ops", reason="second")
    registry.promote("m", 5, who="ops", reason="canary", alias="canary")
    return registry


def _numbers(reg: RedisRegistry, **filters: object) -> list[int]:
    return [v.version.number for v in reg.list_versions("m", **filters)]  # type: ignore[arg-type]


def test_filters_select_exactly_and_combine(populated: RedisRegistry) -> None:
    assert _numbers(populated) == [1, 2, 3, 4, 5]
    assert _numbers(populated, status=VersionStatus.BLESSED) == [2]
    assert _numbers(populated, status=VersionStatus.CANDIDATE) == [1, 5]
    assert _numbers(populated, site="b") == [2, 3, 4, 5]
    assert _numbers(populated, site="d") == [5]
    assert _numbers(populated, site="zz") == []
    assert _numbers(populated, parent=2) == [3, 4]
    assert _numbers(populated, since=T0 + 3600) == [2, 3, 4, 5]
    assert _numbers(populated, until=T0 + 3600) == [1]
    assert _numbers(populated, since=T0 + 3600, until=T0 + 3 * 3600) == [2, 3]
    assert _numbers(populated, site="b", parent=2, status=VersionStatus.PRODUCTION) == [4]


def test_every_listing_shows_aliases_and_status(populated: RedisRegistry) -> None:
    views = {v.version.number: (v.status, v.aliases) for v in populated.list_versions("m", site="b")}
    assert views == {2: (VersionStatus.BLESSED, []), 3: (VersionStatus.REJECTED, []),
                     4: (VersionStatus.PRODUCTION, ["production"]), 5: (VersionStatus.CANDIDATE, ["canary"])}
    (only,) = populated.list_versions("m", parent=4)
    assert only.aliases == ["canary"]


def test_bad_site_name_is_refused_before_it_reaches_a_key(populated: RedisRegistry) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        populated.list_versions("m", site="../x")

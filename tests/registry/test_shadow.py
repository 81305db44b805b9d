"""Shadow runs in the store: one mirrored candidate per model, its start and end seen by replicas, every
replica's counts adding up."""

from __future__ import annotations

import pytest

from clreg.registry.errors import Conflict
from clreg.registry.records import ShadowPolicy
from clreg.registry.shadow import NO_SITE, ShadowCounts, ShadowRun, Shadows
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def test_a_run_starts_once_and_moves_the_serving_generation(registry: RedisRegistry) -> None:
    shadows = Shadows(registry)
    run = ShadowRun(model="m", version=3, policy=ShadowPolicy(share=0.5))
    before = registry.generation()
    assert shadows.start(run) is True
    assert shadows.start(run) is False  # a replayed start writes nothing
    assert registry.generation() == before + 1
    with pytest.raises(Conflict, match="version 3 of m is mirrored already"):
        shadows.start(ShadowRun(model="m", version=4, policy=ShadowPolicy()))
    assert shadows.active_all(["m", "n"]) == {"m": run}
    shadows.end("m", 4)  # not the mirrored version: nothing happens
    assert shadows.active("m") == run and registry.generation() == before + 1
    shadows.end("m", 3)
    assert shadows.active("m") is None and registry.generation() == before + 2


def test_counts_from_every_replica_add_up_per_site(registry: RedisRegistry) -> None:
    shadows = Shadows(registry)
    shadows.record({("m", 2, "a"): ShadowCounts(requests=3, samples=10, agreed=9, confidence_sum=8.5),
                    ("m", 2, NO_SITE): ShadowCounts(requests=1, samples=2, agreed=0, confidence_sum=1.0)})
    shadows.record({("m", 2, "a"): ShadowCounts(requests=1, samples=10, agreed=10, confidence_sum=9.5)})
    figures = shadows.figures("m", [1, 2])
    assert list(figures) == [2]  # version 1 was never mirrored
    total, site_a = figures[2].total, figures[2].sites["a"]
    assert (total.requests, total.samples, total.agreed) == (5, 22, 19)
    assert site_a.agreement == pytest.approx(19 / 20) and site_a.confidence == pytest.approx(0.9)
    summary = figures[2].summary()
    assert summary["agreement"] == round(19 / 22, 4) and summary["sites"][NO_SITE]["agreement"] == 0.0

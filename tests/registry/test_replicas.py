"""Replica beats: a version is served when every live replica answers with it; silent replicas drop out."""

from __future__ import annotations

from clreg.registry.replicas import ReplicaBeat, Replicas
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def test_served_means_every_live_replica(registry: RedisRegistry) -> None:
    replicas = Replicas(registry, beat_interval_s=1.0)
    assert replicas.serving("m", 2) == (0, 0)  # nobody serves: never "served"
    replicas.beat("r1", {"m": 2, "other": 7})
    replicas.beat("r2", {"m": 1})  # still swapping
    assert replicas.serving("m", 2) == (1, 2)
    replicas.beat("r2", {"m": 2})
    assert replicas.serving("m", 2) == (2, 2)
    replicas.forget("r1")  # shut down
    assert replicas.serving("m", 2) == (1, 1)


def test_a_replica_that_stopped_beating_is_not_live(registry: RedisRegistry) -> None:
    replicas = Replicas(registry, beat_interval_s=1.0)
    replicas.beat("alive", {"m": 3})
    dead = ReplicaBeat(replica="killed", served={"m": 2}, at=0.0)  # its last beat, long ago
    registry.r.hset(registry.key("serving", "replicas"), dead.replica, dead.model_dump_json())
    assert [b.replica for b in replicas.live()] == ["alive"]
    assert registry.r.hkeys(registry.key("serving", "replicas")) == ["alive"]  # and removed
    assert replicas.serving("m", 3) == (1, 1)


def test_a_replica_loading_on_demand_serves_the_production_version_of_models_it_does_not_hold(
        registry: RedisRegistry) -> None:
    replicas = Replicas(registry, beat_interval_s=1.0)
    replicas.beat("eager", {"m": 2})
    replicas.beat("lru", {"other": 1}, on_demand=True)  # m not held: its next request loads production
    assert replicas.serving("m", 2) == (2, 2)
    replicas.beat("lru", {"m": 1}, on_demand=True)  # holds the old version until it swaps
    assert replicas.serving("m", 2) == (1, 2)

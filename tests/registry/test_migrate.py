"""Moving a deployment from one Redis to a Redis Cluster (registry.migrate): every key copied to its hash-tagged
name, and the registry on the cluster reads what it read on the one Redis, then carries on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clreg.registry.connection import StoreConfig
from clreg.registry.daemons import Daemons
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.migrate import copy_to_cluster
from clreg.registry.records import Lineage, ModelVersion
from clreg.registry.replicas import Replicas
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookStore
from tests.registry.sentinel_cluster import ClusterSetup
from tests.registry.test_prefix import _deployment


def _view(reg: RedisRegistry) -> dict[str, Any]:
    """What the registry reads back, across every family of keys."""
    batches = reg.batches.of_model("m")
    return {"models": [reg.get_model(m) for m in reg.list_models()], "sites": reg.sites(),
            "versions": reg.list_versions("m"), "aliases": reg.aliases("m"), "history": reg.alias_history("m"),
            "batches": batches, "states": [reg.batches.state(b.id) for b in batches],
            "counts": reg.batches.site_counts("m", ["a"]), "usage": reg.batches.site_usage("a"),
            "events": EventLog(reg).read("m"), "alerts": EventLog(reg).alerts(), "backlog": IngestQueue(reg).backlog(),
            "webhooks": WebhookStore(reg).subscriptions(), "replicas": Replicas(reg).live(),
            "daemons": [beat for beat, _ in Daemons(reg).listing()], "generation": reg.generation(),
            "inputs": InputLog(reg.cfg, InputLogConfig()).recent("m", 10).tolist()}


def test_a_deployment_moves_to_a_cluster_and_reads_the_same_there(registry: RedisRegistry, store_cfg: StoreConfig,
                                                                  redis_cluster: ClusterSetup, tmp_path: Path) -> None:
    source = _deployment(store_cfg, "moved", tmp_path)
    target = RedisRegistry(redis_cluster.store("moved"))
    target.r.flushdb()
    copied, kept = copy_to_cluster(source.cfg, target.cfg)
    assert (copied, kept) == (len(list(source.r.scan_iter(match="moved:*"))), 0)
    assert _view(target) == _view(source)
    assert "moved:{model:m}:v:1" in set(target.r.scan_iter())
    assert copy_to_cluster(source.cfg, target.cfg) == (0, copied)  # run again: nothing overwritten
    # the deployment carries on from where it was: the next version number, the batch still queued
    assert target.register_version(ModelVersion(model="m", number=1, lineage=Lineage())).number == 2
    assert [b for _, _, b in IngestQueue(target).read(block_ms=10)] == [b.id for b in target.batches.of_model("m")]

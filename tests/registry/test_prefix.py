"""Two deployments on one Redis: every key a deployment writes lies under its prefix, and neither sees the
other's models, sites, batches, queue, events, alerts, inputs, webhooks, daemons or replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.connection import StoreConfig
from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, Site
from clreg.registry.replicas import Replicas
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookStore, new_subscription
from tests.registry.test_batches import _npz

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _deployment(store_cfg: StoreConfig, prefix: str, tmp_path: Path) -> RedisRegistry:
    """One deployment's every kind of write, under `prefix`."""
    reg = RedisRegistry(store_cfg.model_copy(update={"prefix": prefix}))
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=8, width=8, classes=3)))
    reg.add_site(Site(name="a", token_sha256="0" * 64))
    events, queue = EventLog(reg), IngestQueue(reg)
    queue.ensure_group()
    ingest(reg, ArtifactStore(str(tmp_path / prefix)), queue, events, "m", "a",
           _npz(x=np.zeros((6, 8, 8), np.uint8), y=np.array([0, 1, 2, 0, 1, 2])), Limits())
    version = reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    reg.promote("m", version.number, who="test", reason=prefix)
    events.append("m", "gate.failed", version=1)  # an alert
    inputs = InputLog(reg.cfg, InputLogConfig())
    inputs.record("m", np.zeros((2, 1, 8, 8), np.float32), 1)
    inputs.record_confidence("m", "a", np.array([0.9]))
    WebhookStore(reg).add(new_subscription("http://127.0.0.1/hook", ["*"], None))
    Daemons(reg).beat(incarnation(f"daemon-{prefix}"))
    Replicas(reg).beat(f"replica-{prefix}", {"m": 1})
    return reg


def test_two_prefixes_share_one_redis_without_seeing_each_other(registry: RedisRegistry, store_cfg: StoreConfig,
                                                                 tmp_path: Path) -> None:
    first = _deployment(store_cfg, "first", tmp_path)
    keys = set(registry.r.scan_iter())
    assert keys and all(k.startswith("first:") for k in keys), sorted(k for k in keys if not k.startswith("first:"))
    second = _deployment(store_cfg, "second", tmp_path)
    for reg in (first, second):
        assert reg.list_models() == ["m"] and len(reg.list_versions("m")) == 1 and len(reg.batches.of_model("m")) == 1
        assert [c.reason for c in reg.alias_history("m")] == [reg.cfg.prefix]
        assert len(EventLog(reg).alerts()) == 1 and len(WebhookStore(reg).subscriptions()) == 1
        assert [b.replica for b in Replicas(reg).live()] == [f"replica-{reg.cfg.prefix}"]
        assert InputLog(reg.cfg, InputLogConfig()).count("m") == 2
        assert [beat.incarnation.name for beat, _ in Daemons(reg).listing()] == [f"daemon-{reg.cfg.prefix}"]
    assert {k.split(":")[0] for k in registry.r.scan_iter()} == {"first", "second"}

"""The replicas' poll: one read while nothing moved, whatever the number of models; a store blip during a swap
is retried, not remembered as a failed version."""

from __future__ import annotations

from pathlib import Path

import pytest

from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.connection import StoreConfig
from clreg.registry.errors import StoreUnavailable
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.serving.config import ServingConfig
from clreg.serving.model_server import ModelServer

SPEC = InputSpec(channels=1, height=8, width=8, classes=3)


def _commands(registry: RedisRegistry) -> int:
    return int(registry.r.info("stats")["total_commands_processed"])


def _version(registry: RedisRegistry, store: ArtifactStore, name: str) -> int:
    weights = store.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    return registry.register_version(ModelVersion(model=name, number=1, lineage=Lineage(),
                                                  artifacts={"weights": weights})).number


@pytest.mark.parametrize("models", [1, 50])
def test_an_idle_poll_is_one_read(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path,
                                  models: int) -> None:
    store = ArtifactStore(str(tmp_path))
    for i in range(models):
        registry.create_model(Model(name=f"m{i}", factory="clreg.learner.models:small_cnn", input=SPEC))
    registry.promote("m0", _version(registry, store, "m0"), who="test", reason="poll")
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), poll_interval_s=3600)  # no background poll
    server = ModelServer(cfg.model_dump(mode="json"))
    try:
        assert server.loaded["m0"].version == 1
        before = _commands(registry)
        assert server.sync() is False
        assert _commands(registry) - before == 2  # the INFO above, then one GET of the generation
        registry.promote("m0", _version(registry, store, "m0"), who="test", reason="next")
        assert server.sync() is True and server.loaded["m0"].version == 2
    finally:
        server.close()


def test_a_store_blip_during_a_swap_is_retried(registry: RedisRegistry, store_cfg: StoreConfig,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(str(tmp_path))
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    registry.promote("m", _version(registry, store, "m"), who="test", reason="first")
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), poll_interval_s=3600)
    server = ModelServer(cfg.model_dump(mode="json"))
    try:
        registry.promote("m", _version(registry, store, "m"), who="test", reason="second")
        real = server.registry.get_version

        def away(model: str, number: int) -> ModelVersion:
            raise StoreUnavailable("redis: connection reset (a restart)")

        monkeypatch.setattr(server.registry, "get_version", away)  # Redis away for exactly this read
        assert server.sync() is False and server.loaded["m"].version == 1
        monkeypatch.setattr(server.registry, "get_version", real)
        assert server.sync() is True and server.loaded["m"].version == 2  # the next poll retries
        assert "m" not in server._failed
    finally:
        server.close()

"""Replicas that load models on demand (Serve's model multiplexing): a cold model is loaded by its first request,
a replica holds at most N, an evicted model comes back, and a promotion of a held model swaps it in place."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import ray
import torch

from clreg.embedded import Stack
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.replicas import Replicas
from clreg.registry.store import RedisRegistry
from clreg.serving import deploy

pytestmark = pytest.mark.integration
SPEC = InputSpec(channels=1, height=8, width=8, classes=3)
HELD = 2


def _replicas() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "ModelServer" in a["name"]}


@pytest.fixture
def multiplexed(stack: Stack) -> Iterator[Stack]:
    """The predict app redeployed with models loaded on demand, at most HELD per replica; then put back."""
    deploy.start(stack.serving().model_copy(update={"models_per_replica": HELD, "replicas": 1}))
    yield stack
    deploy.start(stack.serving())


def _register(reg: RedisRegistry, store: ArtifactStore, model: str) -> int:
    digest = store.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    return reg.register_version(ModelVersion(model=model, number=1, lineage=Lineage(),
                                             artifacts={"weights": digest})).number


def _predict(url: str, model: str, header: str | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", params={"model": model}, json={"inputs": np.zeros((1, 8, 8)).tolist()},
                      headers={"serve_multiplexed_model_id": header or model}, timeout=30)


def _held(reg: RedisRegistry) -> dict[str, int]:
    """What the one live replica says it holds (its beat)."""
    time.sleep(1.2)  # a beat every second
    beats = Replicas(reg).live()
    assert len(beats) == 1 and beats[0].on_demand
    return beats[0].served


def test_models_load_on_demand_within_the_limit_and_swap_in_place(multiplexed: Stack) -> None:
    reg, store = RedisRegistry(multiplexed.store), ArtifactStore(multiplexed.settings.artifacts())
    torch.manual_seed(3)
    names = [f"mux-{i}" for i in range(4)]
    for name in names:
        reg.create_model(Model(name=name, factory="clreg.learner.models:small_cnn", input=SPEC))
        reg.promote(name, _register(reg, store, name), who="test", reason="start")
    replicas = _replicas()
    for name in names:  # each cold: loaded by this request
        r = _predict(multiplexed.url, name)
        assert r.status_code == 200 and r.json()["model"] == name and r.headers["X-Model-Version"] == "1", r.text
    held = _held(reg)
    assert held == {names[2]: 1, names[3]: 1}  # the two most recently used; the others were evicted

    assert _predict(multiplexed.url, names[0]).status_code == 200  # evicted, loaded again
    assert set(_held(reg)) == {names[3], names[0]}

    second = _register(reg, store, names[0])
    reg.promote(names[0], second, who="test", reason="swap a held model")
    deadline = time.monotonic() + 10
    while _predict(multiplexed.url, names[0]).headers["X-Model-Version"] != str(second):
        assert time.monotonic() < deadline, "the held model was not swapped"
        time.sleep(0.05)
    assert _held(reg) == {names[3]: 1, names[0]: second}  # swapped in place: still held, nothing reloaded
    swaps = [e for e in EventLog(reg).read(names[0]) if e.kind == "serving.swapped"]
    assert [(e.data["version"], e.data["previous"]) for e in swaps] == [(second, 1)]
    assert _replicas() == replicas  # same replica: no restart

    assert _predict(multiplexed.url, "mux-unknown").status_code == 404
    reg.create_model(Model(name="mux-empty", factory="clreg.learner.models:small_cnn", input=SPEC))
    empty = _predict(multiplexed.url, "mux-empty")
    assert empty.status_code == 503 and empty.headers["Retry-After"] and empty.json()["error"] == "not_ready"
    mismatch = _predict(multiplexed.url, names[0], header=names[3])
    assert mismatch.status_code == 400 and "serve_multiplexed_model_id" in mismatch.json()["detail"]


"""In-place swaps under load: every request answered, replicas never restarted, bad weights never served."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import ray

from clreg.embedded import Stack
from learner.models import small_cnn, weights_to_bytes
from registry.artifacts import ArtifactStore
from registry.events import EventLog
from registry.records import InputSpec, Lineage, Model, ModelVersion
from registry.store import RedisRegistry

pytestmark = pytest.mark.integration
SPEC = InputSpec(channels=1, height=8, width=8, classes=3)


def _register(reg: RedisRegistry, store: ArtifactStore, seed: int) -> int:
    torch.manual_seed(seed)
    digest = store.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    return reg.register_version(ModelVersion(model="swap", number=1, lineage=Lineage(),
                                             artifacts={"weights": digest})).number


def _replicas() -> set[str]:
    """Names of the live ModelServer replica actors (a restart would bring a new name)."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in actors if "ModelServer" in a["name"]}


def _wait_served(url: str, version: int, timeout_s: float = 10.0) -> int:
    deadline, served = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline and served != version:
        r = httpx.post(f"{url}/v1/predict", params={"model": "swap"}, json={"inputs": np.zeros((1, 8, 8)).tolist()})
        served = int(r.headers.get("X-Model-Version", -1))
        time.sleep(0.05)
    return served


def test_swaps_under_load_fail_no_request(stack: Stack) -> None:
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    reg.create_model(Model(name="swap", factory="learner.models:small_cnn", input=SPEC))
    versions = [_register(reg, store, seed) for seed in range(3)]
    reg.promote("swap", versions[0], who="test", reason="start")
    assert _wait_served(stack.url, versions[0]) == versions[0]
    replicas = _replicas()
    assert len(replicas) == stack.settings.serve.replicas
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            while not stop.is_set():
                r = http.post("/v1/predict", params={"model": "swap"}, json={"inputs": np.ones((2, 8, 8)).tolist()})
                statuses.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for target in [versions[1], versions[2], versions[0], versions[1], versions[2]]:
        reg.promote("swap", target, who="test", reason="swap under load")
        assert _wait_served(stack.url, target) == target
    stop.set()
    for t in threads:
        t.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    assert _replicas() == replicas  # same replica actors: swapped in place, not restarted


def test_corrupt_weights_are_never_served(stack: Stack) -> None:
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    serving_now = reg.resolve("swap")
    bad = _register(reg, store, seed=99)
    path = Path(store.path(reg.get_version("swap", bad).artifacts["weights"]))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    reg.promote("swap", bad, who="test", reason="corrupt on purpose")
    deadline = time.monotonic() + 10
    events = EventLog(reg)
    while time.monotonic() < deadline and not any(e.kind == "serving.failed" for e in events.read("swap")):
        time.sleep(0.1)
    failed = [e for e in events.read("swap") if e.kind == "serving.failed"]
    assert failed and failed[-1].data["version"] == bad and "corrupt" in failed[-1].data["error"]
    assert _wait_served(stack.url, serving_now, timeout_s=2) == serving_now

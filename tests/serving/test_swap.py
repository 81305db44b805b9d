"""In-place swaps under load: every request answered, replicas never restarted, bad weights never served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

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
from clreg.registry.store import RedisRegistry
from clreg.serving import deploy
from tests.clreg.processes import Prober

pytestmark = pytest.mark.integration
SPEC = InputSpec(channels=1, height=8, width=8, classes=3)


def _register(reg: RedisRegistry, store: ArtifactStore, model: str, seed: int) -> int:
    torch.manual_seed(seed)
    digest = store.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    return reg.register_version(ModelVersion(model=model, number=1, lineage=Lineage(),
                                             artifacts={"weights": digest})).number


def _replicas() -> set[str]:
    """Names of the live ModelServer replica actors (a restart would bring a new name)."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in actors if "ModelServer" in a["name"]}


def _wait_served(url: str, model: str, version: int, timeout_s: float = 10.0, streak: int = 10) -> int:
    """Until `streak` answers in a row come from `version` (every replica has swapped); the last version seen."""
    deadline, served, run = time.monotonic() + timeout_s, -1, 0
    while time.monotonic() < deadline and run < streak:
        r = httpx.post(f"{url}/v1/predict", params={"model": model}, json={"inputs": np.zeros((1, 8, 8)).tolist()})
        served = int(r.headers.get("X-Model-Version", -1))
        run = run + 1 if served == version else 0
        time.sleep(0.02)
    return served


@pytest.fixture(params=[(16, 1), (1, 2)], ids=["batching-on-1-replica", "batching-off-2-replicas"])
def serving(stack: Stack, request: pytest.FixtureRequest) -> Iterator[tuple[Stack, str]]:
    """The stack's predict app redeployed with this batching setting and replica count, then put back."""
    batch, replicas = request.param
    deploy.start(stack.serving().model_copy(update={"batch_max_requests": batch, "replicas": replicas}))
    deadline = time.monotonic() + 30
    while len(_replicas()) != replicas and time.monotonic() < deadline:
        time.sleep(0.2)
    yield stack, f"swap-{replicas}"
    deploy.start(stack.serving())


def test_swaps_under_load_fail_no_request(serving: tuple[Stack, str]) -> None:
    stack, model = serving
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    reg.create_model(Model(name=model, factory="clreg.learner.models:small_cnn", input=SPEC))
    versions = [_register(reg, store, model, seed) for seed in range(3)]
    reg.promote(model, versions[0], who="test", reason="start")
    assert _wait_served(stack.url, model, versions[0]) == versions[0]
    replicas = _replicas()
    assert len(replicas) == int(model.rsplit("-", 1)[1])
    with Prober(stack.url, model, np.ones((2, 8, 8)), clients=16) as probe:
        for target in [versions[1], versions[2], versions[0], versions[1], versions[2]]:
            reg.promote(model, target, who="test", reason="swap under load")
            assert _wait_served(stack.url, model, target) == target
    assert probe.total > 100 and probe.failures == 0, probe.outcomes  # exceptions and timeouts count too
    assert _replicas() == replicas  # same replica actors: swapped in place, not restarted


def test_corrupt_weights_are_never_served(stack: Stack) -> None:
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    model = "swap-corrupt"
    reg.create_model(Model(name=model, factory="clreg.learner.models:small_cnn", input=SPEC))
    good = _register(reg, store, model, seed=1)
    reg.promote(model, good, who="test", reason="start")
    assert _wait_served(stack.url, model, good) == good
    bad = _register(reg, store, model, seed=99)
    path = Path(store.path(reg.get_version(model, bad).artifacts["weights"]))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    reg.promote(model, bad, who="test", reason="corrupt on purpose")
    deadline = time.monotonic() + 10
    events = EventLog(reg)
    while time.monotonic() < deadline and not any(e.kind == "serving.failed" for e in events.read(model)):
        time.sleep(0.1)
    failed = [e for e in events.read(model) if e.kind == "serving.failed"]
    assert failed and failed[-1].data["version"] == bad and "corrupt" in failed[-1].data["error"]
    assert _wait_served(stack.url, model, good, timeout_s=2) == good

"""Shadow evaluation through real Serve replicas: a candidate mirrored on live requests is promoted when it
agrees with production, rejected with its figures when it does not, and waits while too few requests came."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch

from clreg.context import Stores
from clreg.embedded import Stack
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.leases import tool
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, ShadowPolicy, VersionStatus
from clreg.registry.shadow import NO_SITE, ShadowCounts, ShadowFigures, Shadows
from clreg.registry.store import RedisRegistry
from clreg.serving.console_data import _shadow as console_cell
from clreg.shadowing import begin, judge

pytestmark = pytest.mark.integration
SPEC = InputSpec(channels=1, height=8, width=8, classes=3)
MODEL = "shadowed"
POLICY = ShadowPolicy(share=1.0, min_requests=30, min_agreement=0.9)


def _weights(flip: bool) -> bytes:
    """The same network each time; `flip` rotates the head's classes, so every label differs from the original."""
    torch.manual_seed(11)
    net = small_cnn(1, 8, 8, 3)
    if flip:
        head = net[-1]
        with torch.no_grad():
            head.weight.copy_(head.weight.roll(1, dims=0))
            head.bias.copy_(head.bias.roll(1, dims=0))
    return weights_to_bytes(net)


def _register(stores: Stores, flip: bool, status: VersionStatus) -> int:
    digest = stores.artifacts.put(_weights(flip))
    number = stores.registry.register_version(ModelVersion(model=MODEL, number=1, lineage=Lineage(),
                                                           artifacts={"weights": digest})).number
    stores.registry.set_status(MODEL, number, status)
    return number


def _predict(url: str, requests: int) -> set[int]:
    """Requests with fresh inputs, half naming site "a"; the versions that answered."""
    rng, versions = np.random.default_rng(0), set()
    for i in range(requests):
        body: dict = {"inputs": rng.normal(size=(4, 8, 8)).tolist(), **({"site": "a"} if i % 2 else {})}
        r = httpx.post(f"{url}/v1/predict", params={"model": MODEL}, json=body, timeout=10)
        assert r.status_code == 200, r.text
        versions.add(int(r.headers["X-Model-Version"]))
    return versions


def _wait_served(url: str, version: int) -> None:
    """Until the replica answers with `version` (it loads or swaps at its next poll)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = httpx.post(f"{url}/v1/predict", params={"model": MODEL}, json={"inputs": np.zeros((1, 8, 8)).tolist()})
        if r.headers.get("X-Model-Version") == str(version):
            return
        time.sleep(0.1)
    raise AssertionError(f"version {version} not served in 15 s")


def _mirrored(stack: Stack, stores: Stores, number: int, requests: int) -> dict:
    """Send requests until the replica mirrored `requests` of them on `number`; its shadow figures."""
    shadows, deadline = Shadows(stores.registry), time.monotonic() + 30
    while time.monotonic() < deadline:
        assert _predict(stack.url, 10) == {stores.registry.resolve(MODEL)}  # production answers, never the shadow
        figures = shadows.figures(MODEL, [number]).get(number)
        if figures is not None and figures.total.requests >= requests:
            return httpx.get(f"{stack.url}/v1/models/{MODEL}/versions/{number}",
                             headers={"Authorization": f"Bearer {stack.ops_token}"}).json()["shadow"]
        time.sleep(0.3)
    raise AssertionError(f"version {number} was not mirrored on {requests} requests in 30 s")


def test_a_shadowed_candidate_is_promoted_only_if_it_agrees_with_production(stack: Stack) -> None:
    registry = RedisRegistry(stack.store)
    stores = Stores(registry=registry, artifacts=ArtifactStore(stack.settings.artifacts()), events=EventLog(registry))
    model = Model(name=MODEL, factory="clreg.learner.models:small_cnn", input=SPEC, shadow=POLICY)
    registry.create_model(model)
    first = _register(stores, flip=False, status=VersionStatus.BLESSED)
    registry.promote(MODEL, first, who="test", reason="start")
    _wait_served(stack.url, first)

    same = _register(stores, flip=False, status=VersionStatus.BLESSED)  # agrees on every sample
    begin(stores, model, registry.get_version(MODEL, same))
    figures = _mirrored(stack, stores, same, 5)
    assert figures["active"] is True and figures["agreement"] == 1.0
    assert judge(stores, tool(), 10.0) == []  # fewer than min_requests: it waits, still mirrored
    assert registry.status(MODEL, same) is VersionStatus.BLESSED and Shadows(registry).active(MODEL) is not None

    figures = _mirrored(stack, stores, same, POLICY.min_requests)
    assert set(figures["sites"]) == {"a", NO_SITE} and figures["sites"]["a"]["agreement"] == 1.0
    assert 0 < figures["confidence"] <= 1
    assert judge(stores, tool(), 10.0) == [(MODEL, same, "production")]
    assert registry.resolve(MODEL) == same and Shadows(registry).active(MODEL) is None
    assert registry.alias_history(MODEL)[-1].reason.startswith("shadow agreement 100.0% over")
    _wait_served(stack.url, same)

    flipped = _register(stores, flip=True, status=VersionStatus.BLESSED)  # disagrees on every sample
    begin(stores, model, registry.get_version(MODEL, flipped))
    figures = _mirrored(stack, stores, flipped, POLICY.min_requests)
    assert figures["agreement"] == 0.0
    assert judge(stores, tool(), 10.0) == [(MODEL, flipped, "rejected")]
    assert registry.resolve(MODEL) == same and registry.status(MODEL, flipped) is VersionStatus.REJECTED
    failed = [e for e in stores.events.read(MODEL) if e.kind == "shadow.failed"]
    reason = failed[0].data["reasons"][0]
    assert len(failed) == 1 and "agreement 0.0%" in reason and "under the required 90%" in reason
    time.sleep(1.0)  # the replica dropped the candidate: no more mirrored requests are counted
    before = Shadows(registry).figures(MODEL, [flipped])[flipped].total.requests
    _predict(stack.url, 10)
    time.sleep(1.0)
    assert Shadows(registry).figures(MODEL, [flipped])[flipped].total.requests == before


def test_the_console_shows_the_agreement_and_whether_the_version_is_mirrored_now() -> None:
    figures = ShadowFigures.of({"a": ShadowCounts(requests=30, samples=120, agreed=117, confidence_sum=100.0)})
    mirrored, done = ({**figures.summary(), "active": active} for active in (True, False))
    empty = {**ShadowFigures.of({}).summary(), "active": True}  # mirrored, no request yet
    assert console_cell(mirrored) == "mirrored now: agreement 97.5% over 30 requests"
    assert console_cell(done) == "agreement 97.5% over 30 requests"
    assert console_cell(empty) == "mirrored now" and console_cell(None) == ""

"""The weighted canary through real Serve replicas: the candidate answers about its share of the requests naming a site
it is validated at (X-Model-Version says which version answered), never those of another site or naming none, with no
failed request; the replicas' counts reach the registry and the daemon's verdict promotes it."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import numpy as np
import pytest
import torch

from clreg import canarying
from clreg.calibration import site_record
from clreg.context import Stores
from clreg.embedded import Stack
from clreg.gating import scoring_of
from clreg.learner.calibration import calibrate_sites
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry import canary
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.canary import Canaries
from clreg.registry.events import EventLog
from clreg.registry.findings import Calibration
from clreg.registry.leases import tool
from clreg.registry.records import CanaryPolicy, InputSpec, Lineage, Model, ModelVersion, Readiness, VersionStatus
from clreg.registry.store import RedisRegistry

pytestmark = pytest.mark.integration
MODEL, SPEC = "canaried", InputSpec(channels=1, height=8, width=8, classes=2)
POLICY = CanaryPolicy(share=0.5, min_requests=40, max_error_rate=0.05, max_estimate_drop=0.9)


def _calibration(model: Model) -> Calibration:
    """Validated at site "well" (separated held-out logits, enough of each class), not at "weak" (4 positives)."""
    rng = np.random.default_rng(0)
    scored = {}
    for site, positives in (("well", 30), ("weak", 4)):
        y = np.r_[np.ones(positives, int), np.zeros(60, int)]
        scored[site] = (np.stack([np.zeros(len(y)), 3.0 * (2 * y - 1) + rng.normal(size=len(y))], axis=1), y)
    pooled, fits = calibrate_sites(scored)
    return Calibration(model=MODEL, pooled=site_record(pooled), sites={
        s: site_record(fit, *scored[s], scoring=scoring_of(model), draws=200) for s, fit in fits.items()})


def _register(stores: Stores, model: Model, seed: int) -> int:
    torch.manual_seed(seed)
    calibration = stores.artifacts.put(_calibration(model).model_dump_json().encode())
    number = stores.registry.register_version(ModelVersion(model=MODEL, number=1, lineage=Lineage(
        sites=["well", "weak"]), artifacts={"weights": stores.artifacts.put(weights_to_bytes(small_cnn(1, 8, 8, 2))),
                                            "calibration": calibration})).number
    stores.registry.set_status(MODEL, number, VersionStatus.BLESSED)
    return number


def _answers(url: str, site: str | None, requests: int) -> Counter[int]:
    """Which version answered each request naming `site`."""
    rng, seen = np.random.default_rng(1), Counter[int]()
    for _ in range(requests):
        body = {"inputs": rng.uniform(size=(2, 8, 8)).tolist(), **({"site": site} if site else {})}
        r = httpx.post(f"{url}/v1/predict", params={"model": MODEL}, json=body, timeout=10)
        assert r.status_code == 200, r.text
        seen[int(r.headers["X-Model-Version"])] += 1
    return seen


def _loaded(url: str) -> bool:
    body = {"inputs": np.zeros((2, 8, 8)).tolist()}
    r = httpx.post(f"{url}/v1/predict", params={"model": MODEL}, json=body, timeout=10)
    assert r.status_code in (200, 503), r.text
    return r.status_code == 200


def _wait(check: object, what: str, timeout_s: float = 60.0) -> None:  # a busy 2-core box swaps slowly
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.2)


def test_a_canary_answers_its_share_of_a_validated_site_and_is_promoted(stack: Stack) -> None:
    registry = RedisRegistry(stack.store)
    stores = Stores(registry=registry, artifacts=ArtifactStore(stack.settings.artifacts()), events=EventLog(registry))
    model = Model(name=MODEL, factory="clreg.learner.models:small_cnn", input=SPEC, canary=POLICY,
                  readiness=Readiness(ece_limit=1.0))
    registry.create_model(model)
    first = _register(stores, model, 1)
    registry.promote(MODEL, first, who="test", reason="start")
    _wait(lambda: _loaded(stack.url), "production loaded", 60.0)  # 503 not_ready until the replica has it
    assert _answers(stack.url, None, 1) == Counter({first: 1})
    second = _register(stores, model, 2)
    assert canary.begin(registry, stores.events, stores.artifacts, model, registry.get_version(MODEL, second))
    _wait(lambda: second in _answers(stack.url, "well", 10), "the canary answering")

    well, weak, none = (_answers(stack.url, s, 80) for s in ("well", "weak", None))
    assert set(well) == {first, second} and 15 <= well[second] <= 65  # about half
    assert weak == Counter({first: 80}) and none == Counter({first: 80})  # never where not validated
    counts = Canaries(registry)
    _wait(lambda: sum(c.requests for c in counts.figures(MODEL, second).values()) >= POLICY.min_requests,
          "the replicas' counts recorded")
    figures = counts.figures(MODEL, second)
    assert set(figures) == {"well"} and figures["well"].errors == 0 and 0 < (figures["well"].estimate or 0) <= 1
    assert canarying.judge(stores, tool(), 10.0) == [(MODEL, second, "production")]
    assert registry.resolve(MODEL) == second
    _wait(lambda: _answers(stack.url, "weak", 5) == Counter({second: 5}), "the promoted version served")

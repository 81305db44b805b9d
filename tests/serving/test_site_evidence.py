"""Thresholds and readiness that know their evidence, on the real gateway app: a binary site with 5 positives in its
held-out set gets no recommended cost threshold and is not validated; every operating point comes with intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clreg.calibration import site_record
from clreg.gating import scoring_of
from clreg.learner.calibration import calibrate_sites
from clreg.learner.operating import point_interval
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import token_sha256
from clreg.registry.findings import Calibration
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, Readiness, Site
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app

SCREEN_REASON = ("5 positives in the held-out set, fewer than the 10 needed to validate a binary model: push more "
                 "labelled positives")


def _logits(positives: int, negatives: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out logits [N, 2] of a binary model whose class-1 logit sits `separation` from 0 on each class's side."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    z1 = separation * (2 * y - 1) + (rng.normal(0.0, 1.0, len(y)) if separation else 0.0)
    return np.stack([np.zeros(len(y)), z1 - 2.0], axis=1), y  # -2: "normal" is the usual answer


def _serve(registry: RedisRegistry, artifacts: ArtifactStore) -> Calibration:
    """A production version calibrated (as clreg calibrates) on three sites: the issue's "screen" (5 positives among
    45), "ample" (20 among 200) and "majority" (20 among 200, answered "normal" every time)."""
    model = Model(name="scr", factory="clreg.learner.models:small_cnn", readiness=Readiness(ece_limit=1.0),
                  input=InputSpec(channels=1, height=8, width=8, classes=2))  # judged here: the metric, the counts
    registry.create_model(model)
    scored = {"screen": _logits(5, 40, 3.0, 0), "ample": _logits(20, 180, 3.0, 1), "majority": _logits(20, 180, 0, 2)}
    pooled, fits = calibrate_sites(scored)
    calibration = Calibration(model="scr", pooled=site_record(pooled), sites={
        s: site_record(fit, *scored[s], scoring=scoring_of(model), draws=200) for s, fit in fits.items()})
    sha = artifacts.put(calibration.model_dump_json().encode())
    number = registry.register_version(ModelVersion(model="scr", number=1, lineage=Lineage(sites=list(scored)),
                                                    artifacts={"calibration": sha})).number
    registry.promote("scr", number, who="test", reason="evidence")
    for site in scored:
        registry.add_site(Site(name=site, token_sha256=token_sha256(site)))
    return calibration


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_five_positives_give_no_cost_threshold_and_no_validation(registry: RedisRegistry, store_cfg: StoreConfig,
                                                                 tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    calibration = _serve(registry, ArtifactStore(str(tmp_path)))
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), ops_token_sha256=token_sha256("ops"))
    client = TestClient(create_app(cfg), base_url="http://127.0.0.1", headers={"Authorization": "Bearer ops"})

    def get(path: str, **params: object) -> dict:
        answer = client.get(path, params={"model": "scr", **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    screen = calibration.sites["screen"]
    assert (screen.metric, screen.class_counts, screen.samples) == ("auroc", [40, 5], 45)
    assert screen.metric_interval[0] >= 0.8  # the AUROC itself would pass: the counts decide
    priced = get("/v1/sites/screen/operating-point", cost_fp=1, cost_fn=10)
    assert (priced["recommended"], priced["positives"], priced["negatives"]) == (False, 5, 40)
    assert priced["reason"] == ("5 positives in the held-out set, fewer than the 10 needed to choose a threshold by "
                                "cost; use 0.5 or push more labelled positives")
    low, high = priced["sensitivity_interval"]
    assert low <= priced["sensitivity"] <= high and priced["expected_cost_interval"][0] <= priced["expected_cost"]
    assert "recommended" not in get("/v1/sites/screen/operating-point", threshold=0.5)  # not chosen by cost
    ample = get("/v1/sites/ample/operating-point", cost_fp=1, cost_fn=10)
    assert (ample["recommended"], ample["reason"], ample["positives"], ample["negatives"]) == (True, None, 20, 180)
    few, many = (get(f"/v1/sites/{s}/operating-point", sensitivity=0.8) for s in ("screen", "ample"))
    assert (few["sensitivity"], few["sensitivity_interval"]) == (0.8, [0.4, 1.0])  # 4 of 5 found: 2 of 5 as likely
    assert many["sensitivity"] == 0.8 and 0 < np.diff(many["sensitivity_interval"])[0] < 0.4  # 16 of 20: narrower

    report = get("/v1/sites/screen/validation")
    assert (report["validated"], report["reasons"], report["metric"]) == (False, [SCREEN_REASON], "auroc")
    assert report["heldout"]["class_counts"] == [40, 5] and report["threshold"]["positives"] == 5
    at_half = point_interval(np.array(screen.scores), np.array(screen.labels), 0.5)  # the site's (unset) threshold
    assert report["threshold"]["sensitivity_interval"] == list(at_half.sensitivity_interval or ())  # same draws
    page = client.get("/v1/sites/screen/validation", params={"model": "scr", "format": "html"}).text
    assert "5 positives in the held-out set" in page and "held-out positives, negatives</th><td>5, 40" in page
    assert get("/v1/sites/ample/validation")["validated"] is True  # validated by its AUROC interval

    majority = get("/v1/sites/majority/validation")
    held = majority["heldout"]
    assert held["accuracy_interval"][0] >= 0.8 and held["accuracy"] == 0.9  # the old floor would have passed it
    assert majority["validated"] is False and held["metric_baseline"] == 0.5
    assert held["metric_interval"][0] < 0.8 and "does not reach the floor 0.8" in majority["reasons"][0]

"""The whole path through real Redis, Ray, Ray Serve, Evidently and PyTorch.

Sites push batches over HTTP; the daemon checks drift, trains on Ray, gates and promotes; the Serve
replicas swap in place. After each push the test asserts the version that answers /v1/predict and
recomputes the gate's per-site accuracies from the stored weights and held-out sets.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from clreg import context
from clreg.client import ApiError, Client, npz_bytes
from clreg.learner.calibration import scaled_proba
from clreg.learner.evaluate import predict_logits, site_metrics
from clreg.learner.sitebn import site_model
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.records import VersionStatus

pytestmark = pytest.mark.integration
MODEL = "digits"


def _served(client: Client, x: np.ndarray, expected: int, timeout_s: float = 15.0) -> int:
    deadline, served = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline and served != expected:
        try:
            served = client.predict(x, MODEL)[1]
        except ApiError:
            pass
        time.sleep(0.1)
    return served


def test_batches_flow_to_served_versions(running: tuple[Client, context.Context]) -> None:
    client, ctx = running
    sites = digits_sites(seed=0, names=("base", "contrast", "blur-noise"))
    client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
    expected_production: int | None = None
    for i, site in enumerate(sites):
        token = client.add_site(site.name)["token"]
        pushed = client.push(site.name, token, npz_bytes(to_uint8(site.x), site.y), MODEL)
        assert pushed["status"] == "accepted" and pushed["samples"] == len(site.y)
        state = client.wait_batch(pushed["batch_id"], timeout_s=240)
        assert (state["status"], state["version"]) == ("promoted", i + 1), state  # each site learnt, none forgot
        expected_production = state["version"]
        # "served": every live replica answers with it, so predicting now never meets the old version
        assert state["served"] is True and state["replicas"]["serving"] == state["replicas"]["live"] >= 1
        assert client.predict(site.x[:1], MODEL)[1] == expected_production
        # drift is checked against the production reference from the second site on
        assert (state["drift_report_id"] is None) == (i == 0)
        _check_gate(client, ctx, state["version"], [s.name for s in sites[: i + 1]])
        assert _served(client, site.x[:2], expected_production) == expected_production
        _check_calibration(client, ctx, expected_production, sites[0].name, site.x[:3])
        _check_gate_is_what_predict_answers(client, ctx, expected_production)
    assert expected_production is not None
    drift = client.get(f"/v1/drift/{state['drift_report_id']}")
    assert drift["drift"] is True and drift["reference_version"] is not None
    kinds = [e["kind"] for e in client.get("/v1/events", model=MODEL)]
    assert kinds.count("batch.received") == 3 and "serving.swapped" in kinds and "drift.alert" in kinds


def _check_calibration(client: Client, ctx: context.Context, number: int, site: str, x: np.ndarray) -> None:
    """A named site's answer is softmax(logits / T) with that site's temperature from the served version."""
    record = client.get(f"/v1/models/{MODEL}/versions/{number}")["calibration"]
    version = ctx.registry.get_version(MODEL, number)
    assert sorted(record["sites"]) == sorted(version.lineage.sites)
    t = record["sites"][site]["temperature"]
    assert t > 0 and record["sites"][site]["samples"] > 0
    answer, served = client.predict(x, MODEL, site=site)
    assert served == number
    assert answer["calibration"]["site"] == site and answer["calibration"]["temperature"] == pytest.approx(t, abs=1e-6)
    stores = ctx.stores
    net = site_model(stores.module(ctx.registry.get_model(MODEL), version.artifacts["weights"]),
                     stores.bank(version) or {}, site)
    np.testing.assert_allclose(answer["probabilities"], scaled_proba(predict_logits(net, x), t), atol=1e-5)


def _check_gate_is_what_predict_answers(client: Client, ctx: context.Context, number: int) -> None:
    """The gate's verdict is only valid if it scored what serving answers: each site's held-out samples, sent
    to /v1/predict naming the site, get exactly the accuracy the served version's gate report holds."""
    report = client.get(f"/v1/models/{MODEL}/versions/{number}")["gate_report"]
    model = ctx.registry.get_model(MODEL)
    learnt = ctx.stores.learnt_batches(ctx.registry.get_version(MODEL, number))
    heldout = ctx.stores.split_by_site(model, learnt, "heldout")
    for line in report["sites"]:
        x, y = heldout[line["site"]]
        answer, served = client.predict(x, MODEL, site=line["site"])
        assert served == number and answer["normalisation"]["site"] == line["site"]
        assert float(np.mean(np.array(answer["labels"]) == y)) == line["candidate_accuracy"], line["site"]


def _check_gate(client: Client, ctx: context.Context, number: int, learnt_sites: list[str]) -> None:
    """The stored gate report's accuracies equal a fresh evaluation of the stored weights."""
    record = client.get(f"/v1/models/{MODEL}/versions/{number}")
    report = record["gate_report"]
    assert [line["site"] for line in report["sites"]] == sorted(learnt_sites)
    model = ctx.registry.get_model(MODEL)
    version = ctx.registry.get_version(MODEL, number)
    net, bank = ctx.stores.module(model, version.artifacts["weights"]), ctx.stores.bank(version)
    assert bank is not None and sorted(bank) == sorted(learnt_sites)  # per-site BatchNorm, the default
    heldout = ctx.stores.split_by_site(model, ctx.stores.learnt_batches(version), "heldout")
    for line in report["sites"]:
        x, y = heldout[line["site"]]
        assert line["samples"] == len(y)
        expected = site_metrics(net, x, y, site_bn=bank[line["site"]]).accuracy
        assert line["candidate_accuracy"] == pytest.approx(expected, abs=1e-9)
    status = VersionStatus(record["status"])
    assert (status in (VersionStatus.PRODUCTION, VersionStatus.BLESSED)) == report["passed"]

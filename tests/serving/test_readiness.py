"""Site readiness through the real Serve proxy: answers say whether the version is validated at the site, a
`refuse` model answers 409 for a site it is not validated at, and the validation report says why."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clreg.client import ApiError, Client
from clreg.embedded import Stack

pytestmark = pytest.mark.integration


def _fit(accuracy: float, low: float, ece: float) -> dict:
    return {"temperature": 1.0, "samples": 120, "ece": 0.09, "ece_calibrated": ece, "nll": 0.4, "nll_calibrated": 0.35,
            "accuracy": accuracy, "accuracy_interval": (low, min(1.0, 2 * accuracy - low)),
            "sensitivity": {"0": (accuracy, low, 1.0)}, "reliability_before": [(0.9, accuracy, 120)],
            "reliability_after": [(accuracy, accuracy, 120)]}


def _serve(stack: Stack, client: Client, name: str, policy: str) -> int:
    """A production version validated at site "good" (accuracy 0.93, from 0.88) and not at "weak" (from 0.71)."""
    from clreg.learner.models import small_cnn, weights_to_bytes
    from clreg.registry.artifacts import ArtifactStore
    from clreg.registry.findings import Calibration, SiteCalibration
    from clreg.registry.records import Lineage, ModelVersion
    from clreg.registry.store import RedisRegistry

    client.create_model(name, "clreg.learner.models:small_cnn", (1, 8, 8), classes=3,
                        readiness={"accuracy_floor": 0.8, "ece_limit": 0.1, "policy": policy})
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    sites = {"good": SiteCalibration(**_fit(0.93, 0.88, 0.04)), "weak": SiteCalibration(**_fit(0.78, 0.71, 0.04))}
    cal = Calibration(model=name, sites=sites, pooled=sites["good"])
    artifacts = {"weights": store.put(weights_to_bytes(small_cnn(1, 8, 8, 3))),
                 "calibration": store.put(cal.model_dump_json().encode())}
    number = reg.register_version(ModelVersion(model=name, number=1, lineage=Lineage(sites=list(sites)),
                                               artifacts=artifacts)).number
    reg.promote(name, number, who="test", reason="readiness")
    return number


def _predict(client: Client, model: str, site: str | None) -> dict:
    deadline = time.monotonic() + 30
    while True:  # the replicas pick the version up on their next poll
        try:
            return client.predict(np.zeros((1, 1, 8, 8)), model=model, site=site)[0]
        except ApiError as e:
            if e.status != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_refuse_policy_answers_409_for_a_site_that_is_not_validated(stack: Stack) -> None:
    client = Client(stack.url, stack.admin_token)
    client.wait_ready()
    for site in ("good", "weak", "elsewhere"):
        client.add_site(site)
    version = _serve(stack, client, "strict", "refuse")
    answer = _predict(client, "strict", "good")
    assert (answer["version"], answer["site"], answer["validated"]) == (version, "good", True)
    deadline = time.monotonic() + 10  # every replica swaps on its next poll and says so at once
    while not (record := client.get(f"/v1/models/strict/versions/{version}"))["served"]:
        assert time.monotonic() < deadline, record["replicas"]
        time.sleep(0.1)
    assert record["replicas"]["serving"] == record["replicas"]["live"] >= 1
    for site, reason in (("weak", "0.710"), ("elsewhere", "never learnt")):
        with pytest.raises(ApiError) as err:
            _predict(client, "strict", site)
        assert (err.value.status, err.value.code) == (409, "site_not_validated")
        assert reason in err.value.detail and site in err.value.detail
    assert "validated" not in _predict(client, "strict", None)  # no site named, none routed (no BatchNorm bank)

    _serve(stack, client, "lenient", "warn")
    warned = _predict(client, "lenient", "weak")
    assert warned["validated"] is False and "floor 0.8" in warned["not_validated"][0]

    report = client.get("/v1/sites/weak/validation", model="lenient")
    assert (report["validated"], report["version"], report["rules"]["policy"]) == (False, 1, "warn")
    assert report["heldout"]["accuracy"] == 0.78 and report["heldout"]["accuracy_interval"][0] == 0.71
    assert "floor 0.8" in report["reasons"][0]
    assert client.get("/v1/sites/good/validation", model="lenient")["validated"] is True
    page = client.text("/v1/sites/weak/validation", model="lenient", format="html")
    assert "NOT validated" in page and "0.780" in page and "<script" not in page

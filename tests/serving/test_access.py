"""Who may do what: read tokens, a site's scope and quotas, a predict route that can require a token."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import Stack
from clreg.serving import deploy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Client:
    client = Client(stack.url, stack.admin_token)
    client.wait_ready()
    for name in ("acc-a", "acc-b"):
        client.create_model(name, "clreg.learner.models:small_cnn", (1, 8, 8), classes=3)
    return client


def _batch(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return npz_bytes(rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2]))


def test_a_site_pushes_only_to_its_models_and_reads_only_its_batches(stack: Stack, admin: Client) -> None:
    scoped = admin.add_site("acc-scoped", models=["acc-a"])
    other = admin.add_site("acc-other")["token"]
    assert scoped["models"] == ["acc-a"]
    pushed = admin.push("acc-scoped", scoped["token"], _batch(0), "acc-a")
    with pytest.raises(ApiError) as refused:
        admin.push("acc-scoped", scoped["token"], _batch(1), "acc-b")
    assert (refused.value.status, refused.value.code) == (403, "forbidden") and "acc-a" in refused.value.detail
    own = Client(stack.url, token=scoped["token"]).get(f"/v1/batches/{pushed['batch_id']}")
    assert own["site"] == "acc-scoped"
    with pytest.raises(ApiError) as foreign:
        Client(stack.url, token=other).get(f"/v1/batches/{pushed['batch_id']}")
    assert foreign.value.status == 403
    with pytest.raises(ApiError) as listing:  # a site's token reads nothing else
        Client(stack.url, token=scoped["token"]).get("/v1/models")
    assert listing.value.status == 401
    assert "acc-a" in [m["name"] for m in Client(stack.url, token=stack.ops_token).get("/v1/models")]


def test_quotas_answer_429_with_retry_after(stack: Stack, admin: Client) -> None:
    daily = admin.add_site("acc-daily", batches_per_day=2)["token"]
    for seed in (10, 11):
        assert admin.push("acc-daily", daily, _batch(seed), "acc-a")["status"] == "accepted"
    r = httpx.post(f"{stack.url}/v1/sites/acc-daily/batches", params={"model": "acc-a"}, content=_batch(12),
                   headers={"Authorization": f"Bearer {daily}", "Content-Type": "application/octet-stream"})
    assert (r.status_code, r.json()["error"]) == (429, "too_many_requests")
    assert 0 < int(r.headers["Retry-After"]) <= 86400
    size = len(_batch(20))
    small = admin.add_site("acc-small", max_bytes=size + 10)["token"]
    assert admin.push("acc-small", small, _batch(20), "acc-a")["status"] == "accepted"
    with pytest.raises(ApiError) as full:
        admin.push("acc-small", small, _batch(21), "acc-a")
    assert full.value.status == 429 and "bytes" in full.value.detail


def test_predict_can_require_a_token(stack: Stack, admin: Client) -> None:
    body = {"inputs": np.zeros((1, 8, 8)).tolist()}
    deploy.start(stack.serving().model_copy(update={"predict_needs_token": True}))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.post(f"{stack.url}/v1/predict", params={"model": "acc-a"}, json=body)
            if r.status_code == 401:
                break
            time.sleep(0.2)
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        r = httpx.post(f"{stack.url}/v1/predict", params={"model": "acc-a"}, json=body,
                       headers={"Authorization": f"Bearer {stack.ops_token}"})
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")  # past the token check: no version yet
    finally:
        deploy.start(stack.serving())

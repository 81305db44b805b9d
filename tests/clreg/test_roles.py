"""`clreg serve` deploys or updates the Serve applications on a running cluster and exits; the gateway
answers 503 with Retry-After while its Redis is away, and serves again once it is back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from fastapi.testclient import TestClient

from clreg.client import npz_bytes
from clreg.embedded import Stack, start_valkey
from clreg.home import Home
from clreg.registry.batches import token_sha256
from clreg.registry.connection import StoreConfig
from clreg.registry.records import InputSpec, Model, Site
from clreg.registry.store import RedisRegistry
from clreg.serving import deploy
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from tests.clreg import processes

pytestmark = pytest.mark.integration


def _model_servers() -> int:
    return sum("ModelServer" in a["name"] for a in ray.util.list_named_actors(all_namespaces=True))


def test_clreg_serve_updates_the_running_applications_and_exits(stack: Stack, tmp_path: Path) -> None:
    env = processes.stack_env(stack, serve__replicas="2", serve__batch_max_requests="16")
    try:
        done = processes.Child(["serve"], env, tmp_path / "serve.log")
        assert done.wait(180) == 0, done.output()[-3000:]
        deadline = time.monotonic() + 30
        while _model_servers() != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _model_servers() == 2 and "clreg is served at" in done.output()
        assert httpx.get(f"{stack.url}/readyz").json() == {"status": "ready"}
    finally:
        deploy.start(stack.serving())


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_ingest_answers_503_with_retry_after_while_redis_is_away(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    password = home.secrets()["valkey"]
    valkey = start_valkey(home, password, [])
    store = StoreConfig(url=valkey.url, prefix="away", socket_timeout_s=1)
    reg = RedisRegistry(store)
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=8, width=8, classes=3)))
    reg.add_site(Site(name="s", token_sha256=token_sha256("site-token")))
    client = TestClient(create_app(ServingConfig(store=store, artifacts_url=str(tmp_path / "artifacts"))),
                        base_url="http://127.0.0.1", headers={"Authorization": "Bearer site-token"})
    body = npz_bytes(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 0]))
    push = {"url": "/v1/sites/s/batches", "params": {"model": "m"}, "content": body,
            "headers": {"Content-Type": "application/octet-stream"}}
    try:
        os.kill(valkey.pid, signal.SIGKILL)
        away = client.post(**push)
        assert (away.status_code, away.json()["error"]) == (503, "store_unavailable")
        assert away.headers["Retry-After"] == "2"
        valkey = start_valkey(home, password, [])  # the same port: the gateway's client reconnects by itself
        back = client.post(**push)
        assert back.status_code == 202, back.text
    finally:
        valkey.stop()


def test_replicas_keep_serving_what_they_loaded_while_redis_is_away(stack: Stack, tmp_path: Path) -> None:
    import torch
    from ray import serve

    from clreg.learner.models import small_cnn, weights_to_bytes
    from clreg.registry.artifacts import ArtifactStore
    from clreg.registry.records import Lineage, ModelVersion
    from clreg.serving import model_server

    home = Home(tmp_path / "home")
    home.create()
    password = home.secrets()["valkey"]
    valkey = start_valkey(home, password, [])
    store = StoreConfig(url=valkey.url, prefix="away", socket_timeout_s=1)
    reg, artifacts = RedisRegistry(store), ArtifactStore(str(tmp_path / "artifacts"))
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=8, width=8, classes=3)))
    torch.manual_seed(0)
    digest = artifacts.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    reg.promote("m", reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage(),
                                                       artifacts={"weights": digest})).number, who="t", reason="t")
    cfg = stack.serving().model_copy(update={"store": store, "artifacts_url": str(tmp_path / "artifacts")})
    serve.run(model_server.deployment(cfg).options(name="AwayServer").bind(cfg.model_dump(mode="json")),
              name="away", route_prefix="/away", blocking=False)
    url, body = f"{stack.url}/away", {"inputs": np.zeros((1, 8, 8)).tolist()}
    try:
        deadline = time.monotonic() + 60
        while httpx.post(url, params={"model": "m"}, json=body).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(valkey.pid, signal.SIGKILL)
        during = [httpx.post(url, params={"model": "m"}, json=body, timeout=10) for _ in range(20)]
        assert {r.status_code for r in during} == {200} and {r.headers["X-Model-Version"] for r in during} == {"1"}
        valkey = start_valkey(home, password, [])
        assert httpx.post(url, params={"model": "m"}, json=body).status_code == 200
    finally:
        serve.delete("away")
        valkey.stop()

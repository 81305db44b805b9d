"""The Python client against the real gateway app: waiting for a batch stops once the batch is settled."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from clreg.client import Client, npz_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest, token_sha256
from clreg.registry.connection import StoreConfig
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import BatchState, BatchStatus, InputSpec, Model
from clreg.registry.store import RedisRegistry
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app


def test_waiting_for_a_batch_stops_when_it_waits_for_a_later_update(registry: RedisRegistry, store_cfg: StoreConfig,
                                                                    tmp_path: Path) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=4, width=4, classes=2)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    rng = np.random.default_rng(0)
    data = npz_bytes(rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8), np.array([0, 1] * 4))
    batch, _ = ingest(registry, ArtifactStore(str(tmp_path)), queue, EventLog(registry), "m", "a", data, Limits())
    registry.batches.set_state(batch.id, BatchState(status=BatchStatus.WAITING, version=2, updates=1,
                                                    detail="earlier sites together: ...; joins the next update"))
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), ops_token_sha256=token_sha256("ops"))
    client = Client("http://127.0.0.1", token="ops")
    client.http = TestClient(create_app(cfg), base_url="http://127.0.0.1")
    started = time.monotonic()
    state = client.wait_batch(batch.id, timeout_s=30)
    assert (state["status"], state["updates"], state["version"]) == ("waiting", 1, 2)
    assert time.monotonic() - started < 10  # answered at once, not after the timeout
    registry.batches.set_state(batch.id, BatchState(status=BatchStatus.DRIFT_CHECKED))
    assert client.wait_batch(batch.id, timeout_s=1)["status"] == "drift_checked"  # not settled: the time ran out

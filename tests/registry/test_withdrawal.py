"""Ops withdraw a waiting batch: it is rejected for good with who and why, leaves the pending set, and a batch
being learnt or decided cannot be withdrawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clreg.client import npz_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.leases import Lease
from clreg.registry.records import BatchState, BatchStatus, InputSpec, Model
from clreg.registry.store import RedisRegistry
from clreg.registry.withdrawal import withdraw

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _batch(registry: RedisRegistry, tmp_path: Path, seed: int) -> str:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=4, width=4, classes=2))) \
        if "m" not in registry.list_models() else None
    rng = np.random.default_rng(seed)
    data = npz_bytes(rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8), np.array([0, 1] * 4))
    queue = IngestQueue(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, ArtifactStore(str(tmp_path)), queue, EventLog(registry), "m", "a", data, Limits())
    registry.batches.add_pending("m", batch.id)
    return batch.id


def test_a_waiting_batch_is_withdrawn_for_good_and_a_decided_one_is_not(registry: RedisRegistry,
                                                                        tmp_path: Path) -> None:
    waiting, promoted = _batch(registry, tmp_path, 0), _batch(registry, tmp_path, 1)
    registry.batches.set_state(waiting, BatchState(status=BatchStatus.WAITING, version=2, updates=1, detail="x"))
    registry.batches.set_state(promoted, BatchState(status=BatchStatus.PROMOTED, version=3))
    events = EventLog(registry)
    state = withdraw(registry, events, waiting, who="admin", reason="mislabelled scans")
    assert (state.status, state.updates, state.detail) == (BatchStatus.REJECTED, 1,
                                                           "withdrawn by admin: mislabelled scans")
    assert registry.batches.state(waiting) == state and waiting not in registry.batches.pending("m")
    assert [(e.kind, e.data["batch"], e.data["reason"]) for e in events.read("m") if e.kind == "batch.withdrawn"] \
        == [("batch.withdrawn", waiting, "mislabelled scans")]
    for batch in (waiting, promoted):
        with pytest.raises(Conflict, match="can be withdrawn"):
            withdraw(registry, events, batch, who="admin", reason="again")


def test_a_batch_is_not_withdrawn_while_its_model_updates(registry: RedisRegistry, tmp_path: Path) -> None:
    batch = _batch(registry, tmp_path, 2)
    lease = Lease(registry, "m")
    assert lease.acquire()
    try:
        with pytest.raises(Conflict, match="update of model 'm' is running"):
            withdraw(registry, EventLog(registry), batch, who="admin", reason="r")
    finally:
        lease.release()
    assert registry.batches.state(batch).status is BatchStatus.RECEIVED

"""The CLI's progress bar reads the epoch the pipeline writes into a training batch's state."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clreg import context, pipeline
from clreg.cli import EPOCH
from clreg.client import npz_bytes
from clreg.settings import Settings
from learner.train import TrainConfig
from registry.batches import Limits, ingest
from registry.events import IngestQueue
from registry.records import BatchStatus, InputSpec, Model
from registry.store import RedisRegistry, StoreConfig


def test_training_detail_carries_epoch_and_total(registry: RedisRegistry, store_cfg: StoreConfig,
                                                 tmp_path: Path) -> None:
    ctx = context.build(Settings(home=tmp_path, train=TrainConfig(epochs=7)), store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", "base",
                      npz_bytes(np.zeros((6, 8, 8), np.uint8), np.array([0, 1, 2, 0, 1, 2])), Limits())
    pipeline._progress(ctx, [batch.id], 0, "base", {"epoch": 3.0, "loss": 0.25})
    state = registry.batch_state(batch.id)
    found = EPOCH.search(state.detail)
    assert state.status is BatchStatus.TRAINING and found is not None
    assert (found["site"], found["epoch"], found["total"]) == ("base", "3", "7")

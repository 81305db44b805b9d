"""The CLI's progress bar reads the epoch the pipeline writes into a training batch's state; its tables' cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clreg import context, pipeline
from clreg.cli import EPOCH, _shadow
from clreg.client import npz_bytes
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.records import BatchStatus, InputSpec, Model
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import Settings


def test_training_detail_carries_epoch_and_total(registry: RedisRegistry, store_cfg: StoreConfig,
                                                 tmp_path: Path) -> None:
    ctx = context.build(Settings(home=tmp_path, train=TrainConfig(epochs=7)), store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", "base",
                      npz_bytes(np.zeros((6, 8, 8), np.uint8), np.array([0, 1, 2, 0, 1, 2])), Limits())
    pipeline._progress(ctx, [batch.id], 0, "base", {"epoch": 3.0, "loss": 0.25})
    state = registry.batches.state(batch.id)
    found = EPOCH.search(state.detail)
    assert state.status is BatchStatus.TRAINING and found is not None
    assert (found["site"], found["epoch"], found["total"]) == ("base", "3", "7")


def test_ui_prints_the_console_address_of_the_configured_port(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from clreg.cli import app

    monkeypatch.setenv("CLREG_HOME", str(tmp_path))
    monkeypatch.setenv("CLREG_SERVE__PORT", "8123")
    result = CliRunner().invoke(app, ["ui", "--no-open"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8123/ui" in result.output


def test_the_versions_table_shows_a_versions_shadow_figures() -> None:
    assert _shadow(None) == ""
    assert _shadow({"requests": 240, "agreement": 0.99166, "active": False}) == "99.2% of 240 req"
    assert _shadow({"requests": 0, "agreement": None, "active": True}) == "n/a of 0 req (mirroring)"

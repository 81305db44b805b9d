"""The daemon resumes a batch whose entry was delivered but never acked; updates report progress per epoch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clreg import context
from clreg.client import npz_bytes
from clreg.daemon import Daemon
from clreg.learner.errors import TrainingInterrupted
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.learning import assemble, learn
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.records import Batch, BatchStatus, InputSpec, Model
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import DaemonConfig, RedisSettings, Settings
from tests import cheap

pytestmark = pytest.mark.integration


def test_unacked_entry_is_processed_after_restart(registry: RedisRegistry, store_cfg: StoreConfig,
                                                  tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        search=cheap.SEARCH,
                        train=TrainConfig(epochs=2))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    site = digits_sites(seed=1, names=("base",))[0]
    crashed = IngestQueue(registry, consumer="daemon-1")
    crashed.ensure_group()
    batch, _ = ingest(registry, ctx.artifacts, crashed, ctx.events, "m", "base",
                      npz_bytes(to_uint8(site.x[:120]), site.y[:120]), Limits())
    assert len(crashed.read(block_ms=10)) == 1  # delivered, then the daemon "dies" before acking

    restarted = Daemon(ctx, DaemonConfig(name="daemon-1"))
    restarted._one(*restarted.queue.read(pending=True)[0])

    state = registry.batches.state(batch.id)
    assert (state.status, state.version) == (BatchStatus.PROMOTED, 1)
    assert registry.resolve("m") == 1 and restarted.processed == 1
    assert restarted.queue.read(pending=True) == []  # acked once done
    kinds = [e.kind for e in ctx.events.read("m")]
    # this daemon's search settings (cheap.SEARCH) differ from the protocol's defaults: a new revision first;
    # the first promotion also says whether the version is validated at its site (site.readiness)
    assert kinds == ["batch.received", "update.started", "protocol.changed", "update.finished", "gate.passed",
                     "alias.moved", "site.readiness"]
    assert np.isfinite(registry.get_version("m", 1).metrics["final_loss"])


def _one_batch(registry: RedisRegistry, ctx: context.Context) -> tuple[Model, Batch]:
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    registry.create_model(model)
    site = digits_sites(seed=2, names=("base",))[0]
    queue = IngestQueue(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", "base",
                      npz_bytes(to_uint8(site.x[:90]), site.y[:90]), Limits())
    return model, batch


def test_learn_relays_every_epoch_of_every_candidate(registry: RedisRegistry, store_cfg: StoreConfig,
                                                     tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, train=TrainConfig(epochs=3), search=cheap.SEARCH)
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    model, batch = _one_batch(registry, ctx)
    rows: list[tuple[int, str, int]] = []
    learnt = learn(ctx.stores, ctx.train, ctx.search, model, None, [batch],
                   progress=lambda c, s, row: rows.append((c, s, int(row["epoch"]))))
    version = assemble(ctx.stores, ctx.features, ctx.trigger.reference_samples, model, None, learnt)
    candidates = len(ctx.search.candidates)
    assert sorted(set(rows)) == sorted((c, "base", e) for c in range(candidates)
                                       for e in range(1, ctx.search.candidates[c].get("epochs", 3) + 1))
    assert sum(line["chosen"] for line in version.lineage.search) == 1 and len(version.lineage.search) == candidates
    assert registry.list_versions("m") == []  # learning makes a candidate; the pipeline registers it
    chosen = next(line for line in version.lineage.search if line["chosen"])
    assert registry.register_version(version).number == 1
    assert version.lineage.train_settings["epochs"] == chosen["settings"].get("epochs", 3)
    assert chosen["score"] == max(line["score"] for line in version.lineage.search)
    assert set(version.artifacts) == {"weights", "ewc", "ewc/base/fisher", "ewc/base/anchor", "reference", "bn_bank",
                                      "calibration", "replay", "replay/base", "scores"}
    assert version.artifacts["ewc/base/anchor"] == version.artifacts["weights"]  # anchored at its own weights


def test_progress_arrives_while_the_tasks_run_so_a_stop_on_the_first_row_cuts_them_short(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    """Rows relayed only when the tasks returned would let both candidates run all 3000 epochs before `stop`
    could act: stopped on the first row, they are cancelled with most epochs still to run."""
    settings = Settings(home=tmp_path, train=TrainConfig(epochs=3000), search=cheap.SEARCH)
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    model, batch = _one_batch(registry, ctx)
    stop, rows = threading.Event(), []

    def first_row_stops(candidate: int, site: str, row: dict[str, float]) -> None:
        rows.append((candidate, int(row["epoch"])))
        stop.set()

    with pytest.raises(TrainingInterrupted):
        learn(ctx.stores, ctx.train, ctx.search, model, None, [batch], progress=first_row_stops, stop=stop)
    assert rows and max(epoch for _, epoch in rows) < 1500, rows

"""What a dead process left is finished by the next update: a candidate that can no longer be gated is closed
as abandoned with its reason, the batches are learnt again together, and status reports the abandonment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clreg import context, pipeline
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.learning import assemble, learn
from clreg.registry.batches import Limits, ingest
from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.events import IngestQueue
from clreg.registry.leases import Lease
from clreg.registry.records import BatchState, BatchStatus, InputSpec, Model, VersionStatus
from clreg.registry.status import StuckRule, pipeline_status
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import RedisSettings, Settings
from tests import cheap

pytestmark = pytest.mark.integration


def _dead(name: str):  # noqa: ANN202 - an Incarnation whose process has exited
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return incarnation(name).model_copy(update={"pid": proc.pid})


def test_a_stray_candidate_is_abandoned_and_its_batches_learnt_with_the_new_ones(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        search=cheap.SEARCH,
                        train=TrainConfig(epochs=3))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    registry.create_model(model)
    queue = IngestQueue(registry)
    queue.ensure_group()
    base, contrast = digits_sites(seed=7, names=("base", "contrast"))

    def push(site: str, x, y) -> str:  # noqa: ANN001
        return ingest(registry, ctx.artifacts, queue, ctx.events, "m", site, npz_bytes(to_uint8(x), y), Limits())[0].id

    first = push("base", base.x[:200], base.y[:200])
    assert pipeline.process(ctx, pipeline.Worker(), first) is pipeline.Outcome.DONE and registry.resolve("m") == 1

    # A daemon drift-checked batch b1, trained and registered v2 for it, then died (lease held, no verdict).
    b1 = push("contrast", contrast.x[:150], contrast.y[:150])
    registry.batches.add_pending("m", b1)
    registry.batches.set_state(b1, BatchState(status=BatchStatus.TRAINING))
    dead = _dead("crashed")
    Daemons(registry).beat(dead)
    assert Lease(registry, "m", dead, lease_s=900).acquire()
    production = ctx.stores.production("m")
    learnt = learn(ctx.stores, ctx.train, ctx.search, model, production, [registry.batches.get(b1)])
    stray = registry.register_version(assemble(ctx.stores, ctx.features, ctx.trigger.reference_samples, model,
                                               production, learnt))

    # Another batch arrives; the next daemon takes the dead one's lease at once and learns both together.
    b2 = push("contrast", contrast.x[150:300], contrast.y[150:300])
    survivor = pipeline.Worker(incarnation("survivor"))
    Daemons(registry).beat(survivor.me)
    assert pipeline.process(ctx, survivor, b2) is pipeline.Outcome.DONE

    assert registry.status("m", stray.number) is VersionStatus.ABANDONED
    states = [registry.batches.state(b) for b in (b1, b2)]
    assert {s.status for s in states} <= {BatchStatus.PROMOTED, BatchStatus.REJECTED}
    assert {s.version for s in states} == {3} and registry.batches.pending("m") == []
    assert sorted(registry.get_version("m", 3).lineage.batch_ids) == sorted([b1, b2])
    kinds = [e.kind for e in ctx.events.read("m")]
    assert kinds.count("update.taken_over") == 1 and kinds.count("update.abandoned") == 1
    status = pipeline_status(registry, StuckRule())
    [abandoned] = status.abandoned
    assert (abandoned.model, abandoned.version) == ("m", stray.number)
    assert "no longer waiting together" in abandoned.reason
    assert status.stuck == []


def test_status_reports_batches_stuck_past_the_rule(registry: RedisRegistry, store_cfg: StoreConfig,
                                                    tmp_path: Path) -> None:
    ctx = context.build(Settings(home=tmp_path), store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    ids = [ingest(registry, ctx.artifacts, queue, ctx.events, "m", "s", npz_bytes(np.full((3, 8, 8), i, np.uint8),
                  np.array([0, 1, 2])), Limits())[0].id for i in range(3)]
    old = BatchState(status=BatchStatus.TRAINING, updated_at=1.0)
    registry.batches.set_state(ids[0], old)  # training, unchanged for ages: stuck
    registry.batches.set_state(ids[1], BatchState(status=BatchStatus.DRIFT_CHECKED, updated_at=1.0))
    registry.batches.set_state(ids[2], BatchState(status=BatchStatus.PROMOTED, version=1, updated_at=1.0))
    rule = StuckRule(after_s=60, waiting_after_s=10**12)  # waiting for more samples is not stuck (yet)
    stuck = pipeline_status(registry, rule).stuck
    assert [(s.batch_id, s.status) for s in stuck] == [(ids[0], BatchStatus.TRAINING)]
    assert len(pipeline_status(registry, StuckRule(after_s=60, waiting_after_s=60)).stuck) == 2

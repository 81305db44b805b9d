"""Candidate search: validation carved from training data only, each site's data policy respected, K
candidates trained in parallel and the chosen one recorded with every candidate's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clreg import context, pipeline, search
from clreg.client import npz_bytes
from clreg.learner.replay import Memory
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest, token_sha256
from clreg.registry.events import IngestQueue
from clreg.registry.records import InputSpec, Model, ModelVersion, Site
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import RedisSettings, SearchConfig, Settings, TriggerConfig


def test_carving_is_stratified_disjoint_and_deterministic() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.repeat(np.arange(5), 20)
    (fx, fy), (vx, vy) = search.carve(x, y, 0.2, seed=3)
    assert len(vx) == 20 and np.bincount(vy).tolist() == [4] * 5
    assert not set(fx.ravel()) & set(vx.ravel()) and len(fx) + len(vx) == 100
    again = search.carve(x, y, 0.2, seed=3)
    assert (again[1][0] == vx).all()
    (_, _), (single, _) = search.carve(x[:1], y[:1], 0.5, seed=0)
    assert len(single) == 0  # a class with one sample is never left without a training sample


def test_unknown_candidate_settings_are_refused_when_read() -> None:
    with pytest.raises(ValueError, match="extra|ewc_lamda"):
        SearchConfig(candidates=[{"ewc_lamda": 3.0}])


@pytest.mark.integration
def test_a_site_that_forbids_replay_is_never_remembered_and_one_learnt_again_adds_no_fisher_nor_images(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        train=TrainConfig(epochs=2), trigger=TriggerConfig(min_new_samples=100),
                        search=SearchConfig(candidates=[{"ewc_lambda": 300.0}, {"ewc_lambda": 3000.0}]))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    for name, replay in (("keep", True), ("private", False), ("third", True)):
        registry.add_site(Site(name=name, token_sha256=token_sha256(name), replay=replay))
    queue = IngestQueue(registry)
    queue.ensure_group()
    sites = digits_sites(seed=9, names=("base", "contrast", "blur-noise"))
    pushes = [("keep", sites[0], 0), ("private", sites[1], 0), ("third", sites[2], 0), ("keep", sites[0], 150)]
    for name, site, start in pushes:  # the last: a second batch of a site learnt before
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", name,
                          npz_bytes(to_uint8(site.x[start:start + 150]), site.y[start:start + 150]), Limits())
        assert pipeline.process(ctx, pipeline.Worker(), batch.id) is pipeline.Outcome.DONE
    versions = [v.version for v in registry.list_versions("m")]
    memories = [search.memory_of(ctx.stores, ctx.registry.get_model(v.model), v) for v in versions]
    assert [sorted(m.sites) for m in memories][:3] == [["keep"], ["keep"], ["keep", "third"]]
    assert all(m.sites["keep"].x.shape[0] == len(registry.batches.get(versions[0].lineage.batch_ids[0]).train_index)
               for m in memories[:-1])
    last = versions[-2]  # the last to learn a new site (after a rejection, a retry may have come before it)
    lines = last.lineage.search
    assert len(lines) == 2 and sum(line["chosen"] for line in lines) == 1
    assert all(set(line["val_accuracy"]) == {"keep", "third"} for line in lines)  # never "private"
    assert all(line["metric"] == "accuracy" and line["val_values"] == line["val_accuracy"] for line in lines)
    assert all(abs(line["score"] - np.mean(list(line["val_values"].values()))) < 1e-4 for line in lines)
    assert last.lineage.timings["candidates"] == 2
    again = versions[-1]
    _learnt_again(ctx, registry.get_version("m", again.lineage.parent or 0), again, memories[-1])


def _learnt_again(ctx: context.Context, before: ModelVersion, after: ModelVersion, memory: Memory) -> None:
    """The version that learnt a second batch of a known site: the site's Fisher is its parent's part, its
    reservoir (now from both batches) is stored as references, and nothing else sizeable is new."""
    assert after.lineage.sites == before.lineage.sites and len(after.lineage.batch_ids) == 1
    fishers = {k: d for k, d in after.artifacts.items() if k.endswith("/fisher")}
    assert fishers == {k: d for k, d in before.artifacts.items() if k.endswith("/fisher")} and fishers
    keep = [b for b in ctx.stores.learnt_batches(after) if ctx.registry.batches.get(b).site == "keep"]
    assert len(keep) == 2 and {b for b, _ in memory.sites["keep"].refs or []} == set(keep)
    part = ctx.artifacts.get(after.artifacts["replay/keep"])
    assert after.artifacts["replay/keep"] != before.artifacts["replay/keep"]
    assert len(part) < 20 * len(memory.sites["keep"].y) + 1024 < memory.sites["keep"].x.nbytes / 4
    earlier = {d for v in ctx.registry.list_versions("m") if v.version.number < after.number
               for d in v.version.artifacts.values()}
    weights = after.artifacts["weights"]  # the site's anchor names it: not stored again
    assert after.artifacts["ewc/keep/anchor"] == weights
    new = {k for k, d in after.artifacts.items() if d not in earlier and d != weights}
    assert new <= {"ewc", "replay", "replay/keep", "reference", "calibration", "scores", "bn_bank"}, new

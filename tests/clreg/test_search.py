"""Candidate search: validation carved from training data only, each site's data policy respected, K
candidates trained in parallel and the chosen one recorded with every candidate's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clreg import context, pipeline, search
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest, token_sha256
from clreg.registry.events import IngestQueue
from clreg.registry.records import InputSpec, Model, Site
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import RedisSettings, SearchConfig, Settings


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
def test_a_site_that_forbids_replay_is_never_remembered_nor_validated_on(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        train=TrainConfig(epochs=2),
                        search=SearchConfig(candidates=[{"ewc_lambda": 300.0}, {"ewc_lambda": 3000.0}]))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    for name, replay in (("keep", True), ("private", False), ("third", True)):
        registry.add_site(Site(name=name, token_sha256=token_sha256(name), replay=replay))
    queue = IngestQueue(registry)
    queue.ensure_group()
    sites = digits_sites(seed=9, names=("base", "contrast", "blur-noise"))
    for name, site in zip(("keep", "private", "third"), sites, strict=True):
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", name,
                          npz_bytes(to_uint8(site.x[:150]), site.y[:150]), Limits())
        assert pipeline.process(ctx, pipeline.Worker(), batch.id) is pipeline.Outcome.DONE
    versions = [v.version for v in registry.list_versions("m")]
    memories = [search.memory_of(ctx.artifacts, v) for v in versions]
    assert [sorted(m.sites) for m in memories][:3] == [["keep"], ["keep"], ["keep", "third"]]
    assert all(m.sites["keep"].x.shape[0] == len(registry.batches.get(versions[0].lineage.batch_ids[0]).train_index)
               for m in memories)
    last = versions[-1]
    lines = last.lineage.search
    assert len(lines) == 2 and sum(line["chosen"] for line in lines) == 1
    assert all(set(line["val_accuracy"]) == {"keep", "third"} for line in lines)  # never "private"
    assert all(line["metric"] == "accuracy" and line["val_values"] == line["val_accuracy"] for line in lines)
    assert all(abs(line["score"] - np.mean(list(line["val_values"].values()))) < 1e-4 for line in lines)
    assert last.lineage.timings["candidates"] == 2

"""A version's held-out answers and drift reference, computed in the daemon's process or in a Ray task where
training runs (CLREG_SEARCH__SCORE_ON): the same figures either way."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from clreg import context, scores
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.learning import answers_remotely, assemble, learn
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.findings import Calibration
from clreg.registry.records import InputSpec, Model
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import SearchConfig, Settings
from tests import cheap

pytestmark = pytest.mark.integration


def test_answered_in_a_ray_task_or_here_a_version_has_the_same_scores_and_reference(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, train=TrainConfig(epochs=2), search=cheap.SEARCH)
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    registry.create_model(model)
    queue = IngestQueue(registry)
    queue.ensure_group()
    batches = []
    for site in digits_sites(seed=4, names=("base", "contrast")):
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", site.name,
                          npz_bytes(to_uint8(site.x[:120]), site.y[:120]), Limits())
        batches.append(batch)
    learnt = learn(ctx.stores, ctx.train, ctx.search, model, None, batches)
    here, there = (assemble(ctx.stores, ctx.features, 200, model, None, learnt, remote=remote)
                   for remote in (False, True))
    ours, theirs = (scores.from_bytes(ctx.artifacts.get(v.artifacts["scores"])) for v in (here, there))
    assert sorted(ours) == sorted(theirs) == ["base", "contrast"]
    for site in ours:
        assert ours[site].heldout == theirs[site].heldout and np.array_equal(ours[site].labels, theirs[site].labels)
        np.testing.assert_allclose(ours[site].logits, theirs[site].logits, atol=1e-4)
    references = [np.load(io.BytesIO(ctx.artifacts.get(v.artifacts["reference"])), allow_pickle=False)
                  for v in (here, there)]
    assert references[0].files == references[1].files
    for name in references[0].files:
        if references[0][name].dtype.kind == "f":
            np.testing.assert_allclose(references[0][name], references[1][name], atol=1e-3)
    temperatures = [{s: c.temperature for s, c in Calibration.model_validate_json(
        ctx.artifacts.get(v.artifacts["calibration"])).sites.items()} for v in (here, there)]
    assert temperatures[0].keys() == temperatures[1].keys() == {"base", "contrast"}
    assert all(abs(temperatures[0][s] - temperatures[1][s]) < 1e-3 for s in temperatures[0])
    assert set(here.artifacts) == set(there.artifacts)


def test_the_daemon_answers_in_a_ray_task_when_the_cluster_has_a_gpu_or_when_told(ray_session: None) -> None:
    assert answers_remotely(SearchConfig(score_on="ray"))
    assert not answers_remotely(SearchConfig(score_on="daemon"))
    assert not answers_remotely(SearchConfig())  # the tests' local Ray has no GPU

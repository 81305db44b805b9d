"""A version's held-out scores are kept with it and reused exactly where they still answer the same question: a
site whose held-out set grew (a new batch) is answered anew, every other site comes from the stored scores, and
a production that moves brings its own scores, never the previous production's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clreg import context, scores
from clreg.client import npz_bytes
from clreg.learner.answer import Answerer
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.artifacts import Artifact
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import Settings


def _version(ctx: context.Context, model: Model, number: int, seed: int, by_site: dict[str, list[str]]
             ) -> ModelVersion:
    """A version with seeded random weights and its scores on `by_site`, as assemble() stores them."""
    torch.manual_seed(seed)
    weights = ctx.artifacts.put(weights_to_bytes(small_cnn(1, 16, 16, 10)))
    answered = scores.answer(ctx.stores, model, Answerer.of(ctx.stores.module(model, weights), None), by_site)
    stored = ctx.artifacts.put(scores.to_bytes(answered))
    return ModelVersion(model=model.name, number=number, lineage=Lineage(),
                        artifacts={Artifact.WEIGHTS: weights, Artifact.SCORES: stored})


def test_stored_scores_are_reused_exactly_where_their_held_out_set_is_unchanged(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context.build(Settings(home=tmp_path), store_cfg, "http://127.0.0.1:0")
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    registry.create_model(model)
    queue = IngestQueue(registry)
    queue.ensure_group()
    base, contrast = digits_sites(seed=5, names=("base", "contrast"))
    ids = {}
    for name, site, part in (("a1", base, slice(0, 80)), ("b1", contrast, slice(0, 80)), ("a2", base, slice(80, 160))):
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", site.name,
                          npz_bytes(to_uint8(site.x[part]), site.y[part]), Limits(heldout_fraction=0.4))
        ids[name] = batch.id
    before = {"base": [ids["a1"]], "contrast": [ids["b1"]]}
    v1, v2 = _version(ctx, model, 1, 0, before), _version(ctx, model, 2, 1, before)
    answered: list[str] = []
    original = scores.answer
    monkeypatch.setattr(scores, "answer", lambda s, m, a, by: answered.extend(sorted(by)) or original(s, m, a, by))

    stored = scores.of_version(ctx.stores, model, v1, before)
    assert answered == []  # nothing run: both sets are the ones v1's scores answer
    grown = {"base": [ids["a1"], ids["a2"]], "contrast": [ids["b1"]]}  # a new batch of base
    now = scores.of_version(ctx.stores, model, v1, grown)
    assert answered == ["base"]  # exactly the site whose held-out set changed is answered anew
    assert np.array_equal(now["contrast"].logits, stored["contrast"].logits)
    fresh = original(ctx.stores, model, ctx.stores.answerer(model, v1), grown)
    for site in grown:  # what the cache gives equals what running the version gives
        assert np.array_equal(now[site].logits, fresh[site].logits) and np.array_equal(now[site].labels,
                                                                                         fresh[site].labels)
    assert len(now["base"].labels) > len(stored["base"].labels)
    moved = scores.of_version(ctx.stores, model, v2, before)  # production moved to v2: its own scores
    assert answered == ["base"] and not np.array_equal(moved["base"].logits, stored["base"].logits)
    assert np.array_equal(moved["base"].logits,
                          original(ctx.stores, model, ctx.stores.answerer(model, v2), before)["base"].logits)
    without = v1.model_copy(update={"artifacts": {Artifact.WEIGHTS: v1.artifacts[Artifact.WEIGHTS]}})
    scores.of_version(ctx.stores, model, without, before)  # a version stored before scores: all answered
    assert answered == ["base", "base", "contrast"]

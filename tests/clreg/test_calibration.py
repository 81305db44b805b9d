"""A version's calibration: per-site temperatures from held-out logits; binary models keep held-out scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clreg import context, scores
from clreg.calibration import calibrate_version
from clreg.client import npz_bytes
from clreg.learner.answer import Answerer
from clreg.learner.calibration import CROSS_FOLDS, out_of_fold_proba
from clreg.learner.evaluate import predict_logits
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.records import InputSpec, Model
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import Settings


@pytest.mark.parametrize("classes", [2, 10])
def test_calibrates_each_site_and_keeps_binary_scores(registry: RedisRegistry, store_cfg: StoreConfig,
                                                      tmp_path: Path, classes: int) -> None:
    ctx = context.build(Settings(home=tmp_path), store_cfg, "http://127.0.0.1:0")
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=classes))
    registry.create_model(model)
    queue = IngestQueue(registry)
    queue.ensure_group()
    ids = []
    for site in digits_sites(seed=3, names=("base", "contrast")):
        y = (site.y >= 5).astype(int) if classes == 2 else site.y  # binary: "is it 5 or more"
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", site.name,
                          npz_bytes(to_uint8(site.x[:150]), y[:150]), Limits(heldout_fraction=0.4))
        ids.append(batch.id)
    torch.manual_seed(0)
    net = small_cnn(1, 16, 16, classes).eval()
    answerer = Answerer.of(ctx.stores.module(model, ctx.artifacts.put(weights_to_bytes(net))), None)
    scored = scores.answer(ctx.stores, model, answerer, scores.batches_by_site(ctx.stores, ids))
    calibration = calibrate_version(model, scored, ctx.train.seed)
    heldout = ctx.stores.split_by_site(model, ids, "heldout")
    # what the scores must be: out-of-fold calibrated probabilities (temperatures fitted on the other folds)
    oof = out_of_fold_proba({s: (predict_logits(net, x), y) for s, (x, y) in heldout.items()}, CROSS_FOLDS,
                            ctx.train.seed)["per_site"]
    assert sorted(calibration.sites) == ["base", "contrast"]
    assert calibration.pooled.samples == sum(len(y) for _, y in heldout.values())
    for site, (_, y) in heldout.items():
        fit = calibration.sites[site]
        assert fit.samples == len(y) and fit.temperature > 0
        # validation figures: the accuracy /v1/predict would score, inside its interval; counts add up
        logits = predict_logits(net, heldout[site][0])
        assert fit.accuracy == pytest.approx(float((logits.argmax(1) == y).mean()))
        low, high = fit.accuracy_interval or (2.0, -1.0)
        assert low <= fit.accuracy <= high
        assert fit.sensitivity is not None and set(fit.sensitivity) == {str(k) for k in np.unique(y)}
        assert sum(n for _, _, n in fit.reliability_after or []) == len(y)
        if classes == 10:
            assert fit.scores is None and fit.labels is None
            continue
        assert fit.labels == y.tolist() and len(fit.scores) == len(y)
        assert all(0.0 <= s <= 1.0 for s in fit.scores)
        np.testing.assert_allclose(fit.scores, oof[site][:, 1], atol=1e-6)

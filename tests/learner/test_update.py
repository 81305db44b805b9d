"""One update's validation: each site scored by the model's task metric, the score oriented so higher is better."""

from __future__ import annotations

import math

import numpy as np
import torch

from clreg.learner import taskmetric
from clreg.learner.evaluate import predict_proba
from clreg.learner.ewc import EWCState
from clreg.learner.models import small_cnn
from clreg.learner.taskmetric import Scoring
from clreg.learner.train import TrainConfig, TrainResult
from clreg.learner.update import UpdateData, UpdateResult, train_update


def _result(values: dict[str, float], higher_is_better: bool) -> UpdateResult:
    trained = TrainResult(weights=b"", ewc_state=b"", curve=[], seconds=0.0, device="cpu")
    return UpdateResult(trained, [], {s: 0.5 for s in values}, 0.0, "m", values, higher_is_better)


def test_the_score_is_the_mean_of_defined_values_and_a_cost_is_negated() -> None:
    assert _result({"a": 0.9, "b": 0.7, "c": math.nan}, True).score == 0.8  # c has one class: no AUROC
    assert math.isclose(_result({"a": 0.1, "b": 0.3}, False).score, -0.2)  # lower cost: higher score
    assert math.isnan(_result({"a": math.nan}, True).score)


def test_validation_is_scored_by_the_given_metric_per_site() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((48, 1, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    val = {"a": (x[:16], y[:16]), "b": (x[16:32], np.zeros(16, np.int64))}  # b: one class, AUROC undefined
    torch.manual_seed(0)
    net = small_cnn(1, 8, 8, 2)
    data = UpdateData(sites=[("a", x[32:], y[32:])], val=val, scoring=Scoring("auroc"))
    cfg = TrainConfig(epochs=1, bn_policy="update", fisher_samples=8)
    result = train_update(net, data, EWCState(), cfg, None)
    proba = predict_proba(net, x[:16])
    assert result.metric == "auroc" and result.higher_is_better
    assert result.val_values["a"] == taskmetric.value(Scoring("auroc"), y[:16], proba)
    assert math.isnan(result.val_values["b"]) and result.score == result.val_values["a"]
    assert result.val_accuracy["a"] == float(np.mean(proba.argmax(axis=1) == y[:16]))

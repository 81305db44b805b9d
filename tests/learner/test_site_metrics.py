"""Evaluation: per-site metrics on a hand-built case and the continual summary of a hand matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from clreg.learner.errors import DataError
from clreg.learner.evaluate import continual_summary, expected_calibration_error, predict_proba, site_metrics

LOGITS = [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.5, 0.0], [2.0, 1.0, 0.0]]
LABELS = [0, 1, 1, 0, 1]


def _logit_model() -> nn.Module:
    """logits = the first three pixels of a 2x2 image, so each test input states its logits."""
    head = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    return nn.Sequential(nn.Flatten(), head)


def _inputs() -> np.ndarray:
    return np.array([row + [0.0] for row in LOGITS], dtype=np.float32).reshape(5, 1, 2, 2)


def _softmax_max(row: list[float]) -> float:
    return max(math.exp(v) for v in row) / sum(math.exp(v) for v in row)


def test_predict_proba_is_softmax() -> None:
    p = predict_proba(_logit_model(), _inputs(), batch_size=2)
    assert p.shape == (5, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p[0, 0] == pytest.approx(math.exp(3) / (math.exp(3) + 2), rel=1e-6)


def test_site_metrics_on_hand_case() -> None:
    m = site_metrics(_logit_model(), _inputs(), np.array(LABELS))
    assert m.samples == 5
    assert m.correct.tolist() == [True, True, False, True, False]
    assert m.accuracy == pytest.approx(0.6)
    assert m.balanced_accuracy == pytest.approx((1.0 + 1 / 3) / 2)  # class 0: 2/2, class 1: 1/3
    # class 0 vs rest: 5 of 6 pairs ranked right; class 1 vs rest: 4 of 6; class 2 absent -> skipped
    assert m.auroc == pytest.approx((5 / 6 + 4 / 6) / 2)
    conf = [_softmax_max(r) for r in LOGITS]  # every sample falls in its own 1/15-wide bin
    expected_ece = sum(abs(float(c) - k) for c, k in zip(m.correct, conf, strict=True)) / 5
    assert m.ece == pytest.approx(expected_ece, rel=1e-6)


def test_auroc_is_nan_with_a_single_class() -> None:
    m = site_metrics(_logit_model(), _inputs()[:2], np.array([0, 0]))
    assert math.isnan(m.auroc) and m.accuracy == 0.5 and m.balanced_accuracy == 0.5


def test_ece_pools_samples_in_one_bin() -> None:
    proba = np.array([[0.9, 0.1], [0.92, 0.08], [0.3, 0.7]])
    # bin (13/15, 14/15]: conf 0.9, 0.92 with accuracy 1/2; bin (10/15, 11/15]: conf 0.7, correct
    assert expected_calibration_error(np.array([0, 1, 1]), proba) == pytest.approx(
        2 / 3 * abs(0.5 - 0.91) + 1 / 3 * abs(1 - 0.7)
    )


def test_site_metrics_rejects_empty_or_mismatched() -> None:
    with pytest.raises(DataError):
        site_metrics(_logit_model(), _inputs()[:0], np.array([], dtype=np.int64))
    with pytest.raises(DataError):
        site_metrics(_logit_model(), _inputs(), np.array([0, 1]))


def test_continual_summary_on_hand_matrix() -> None:
    R = np.array([[0.9, 0.1, 0.2], [0.8, 0.95, 0.3], [0.7, 0.85, 0.9]])
    s = continual_summary(R)
    assert s["ACC"] == pytest.approx((0.7 + 0.85 + 0.9) / 3)
    assert s["BWT"] == pytest.approx(((0.7 - 0.9) + (0.85 - 0.95)) / 2)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.95 - 0.85)) / 2)


def test_continual_summary_single_site_and_bad_shapes() -> None:
    assert continual_summary(np.array([[0.8]])) == {"ACC": 0.8, "BWT": 0.0, "forgetting": 0.0}
    with pytest.raises(DataError):
        continual_summary(np.zeros((2, 3)))

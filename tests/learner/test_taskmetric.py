"""Task metrics: exact values on hand cases, the majority-collapse case, paired changes and their bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.taskmetric import (
    METRICS,
    Scoring,
    detectable_drop,
    interval,
    paired_change,
    samples_needed,
    value,
)
from clreg.registry.records import InputSpec, Metric, Model


def _binary(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p, p], axis=1)


Y = np.array([0, 0, 0, 1, 1])
P = _binary([0.1, 0.6, 0.2, 0.7, 0.4])


def test_values_on_a_hand_case() -> None:
    assert value(Scoring("accuracy"), Y, P) == pytest.approx(3 / 5)
    assert value(Scoring("balanced_accuracy"), Y, P) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert value(Scoring("auroc"), Y, P) == pytest.approx(5 / 6)  # pairs (pos, neg) ranked right: 5 of 6
    # one false alarm of 3 negatives, one miss of 2 positives, at the set's prevalence 0.4, fn 10x dearer
    cost = value(Scoring("expected_cost", cost_fp=1, cost_fn=10), Y, P)
    assert cost == pytest.approx(1 * (1 / 3) * 0.6 + 10 * (1 / 2) * 0.4)
    assert value(Scoring("expected_cost", prevalence=0.1), Y, P) == pytest.approx((1 / 3) * 0.9 + (1 / 2) * 0.1)


def test_the_metric_names_agree_with_the_record() -> None:
    assert set(METRICS) == set(Metric.__args__)  # type: ignore[attr-defined]
    binary, digits = (Model(name="m", factory="clreg.learner.models:small_cnn",
                            input=InputSpec(channels=1, height=8, width=8, classes=k)) for k in (2, 10))
    assert (binary.task_metric, digits.task_metric) == ("auroc", "accuracy")


def test_a_majority_answer_scores_high_accuracy_and_chance_auroc() -> None:
    y = np.array([1] * 5 + [0] * 45)
    majority = _binary([0.2] * 50)  # "normal" to everyone, the same score for all
    assert value(Scoring("accuracy"), y, majority) == pytest.approx(0.9)
    assert value(Scoring("auroc"), y, majority) == pytest.approx(0.5)
    assert value(Scoring("balanced_accuracy"), y, majority) == pytest.approx(0.5)


def test_auroc_of_one_class_is_undefined_and_cost_needs_a_binary_model() -> None:
    assert math.isnan(value(Scoring("auroc"), np.zeros(4, int), _binary([0.1, 0.2, 0.3, 0.4])))
    with pytest.raises(DataError, match="binary"):
        value(Scoring("expected_cost"), np.array([0, 1, 2]), np.eye(3))


def test_paired_change_is_oriented_so_positive_means_better() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 20)
    good = _binary(np.clip(y * 0.6 + rng.random(100) * 0.4, 0, 1).tolist())
    bad = _binary(rng.random(100).tolist())
    for metric in ("auroc", "expected_cost", "balanced_accuracy", "accuracy"):
        better = paired_change(Scoring(metric), y, good, bad, confidence=0.8)
        worse = paired_change(Scoring(metric), y, bad, good, confidence=0.8)
        assert better.delta > 0 > worse.delta, metric
        assert worse.lower_bound < worse.delta and better.se > 0


def test_paired_change_of_identical_answers_is_zero_with_zero_spread() -> None:
    same = paired_change(Scoring("auroc"), Y, P, P, confidence=0.8)
    assert same.delta == 0 and same.lower_bound == 0 and same.se == 0


def test_interval_brackets_the_value_and_a_drop_needs_samples() -> None:
    rng = np.random.default_rng(1)
    y = np.array([0] * 60 + [1] * 40)
    p = _binary(np.clip(y * 0.2 + rng.random(100) * 0.8, 0, 1).tolist())
    low, high = interval(Scoring("auroc"), y, p)
    assert low < value(Scoring("auroc"), y, p) < high
    assert detectable_drop(0.05, 0.8) == pytest.approx(0.05 * 0.8416, abs=1e-4)
    assert samples_needed(60, 0.10, 0.05) == 240 and samples_needed(60, 0.04, 0.05) == 60


def test_the_vectorised_resamples_equal_the_metric_on_each_resample() -> None:
    from clreg.learner.taskmetric import _resamples, _value, _values

    rng = np.random.default_rng(3)
    y = np.array([0] * 30 + [1] * 12)
    p = _binary(np.round(np.clip(y * 0.3 + rng.random(42) * 0.7, 0, 1), 1).tolist())  # rounded: many ties
    idx = _resamples(y, 50, seed=0)
    for scoring in (Scoring("auroc"), Scoring("accuracy"), Scoring("balanced_accuracy"),
                    Scoring("expected_cost", cost_fn=5)):
        expected = [_value(scoring, y[i], p[i]) for i in idx]
        np.testing.assert_allclose(_values(scoring, y, p, idx), expected, atol=1e-12, err_msg=scoring.metric)

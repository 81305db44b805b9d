"""Site validation figures: bootstrap intervals that cover, sensitivities per class, the reliability diagram, and
the task metric with its interval beside what answering every image the same class scores."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.evaluate import expected_calibration_error
from clreg.learner.taskmetric import Scoring, interval
from clreg.learner.validation import bootstrap_interval, constant_baseline, metric_figures, reliability, site_figures


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_samples() -> None:
    rng = np.random.default_rng(0)
    small, large = ((rng.random(n) < 0.9).astype(float) for n in (40, 4000))
    for sample in (small, large):
        low, high = bootstrap_interval(sample)
        assert low <= sample.mean() <= high
    assert np.diff(bootstrap_interval(large))[0] < np.diff(bootstrap_interval(small))[0] / 5
    assert bootstrap_interval(np.ones(30)) == (1.0, 1.0)  # no spread, no width
    assert bootstrap_interval(small, seed=3) == bootstrap_interval(small, seed=3)  # seeded


def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        sample = (rng.random(200) < 0.85).astype(float)
        low, high = bootstrap_interval(sample, draws=500)
        covered += low <= 0.85 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_reliability_bins_are_what_ece_weighs() -> None:
    rng = np.random.default_rng(2)
    proba = rng.dirichlet(np.ones(3), size=300)
    y = rng.integers(0, 3, size=300)
    bins = reliability(y, proba)
    assert sum(n for _, _, n in bins) == 300
    ece = sum(n / 300 * abs(acc - conf) for conf, acc, n in bins)
    assert ece == pytest.approx(expected_calibration_error(y, proba))


def test_site_figures_on_a_hand_case() -> None:
    y = np.array([0, 0, 0, 1, 1])
    raw = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    figures = site_figures(y, raw, raw)
    assert figures.accuracy == pytest.approx(3 / 5)
    assert figures.sensitivity["0"][0] == pytest.approx(2 / 3) and figures.sensitivity["1"][0] == pytest.approx(1 / 2)
    assert figures.accuracy_interval[0] <= 0.6 <= figures.accuracy_interval[1]
    with pytest.raises(DataError):
        site_figures(y, raw, raw[:4])


Y10 = np.r_[np.ones(5, int), np.zeros(45, int)]  # a 10% site: 5 positives among 50


def test_a_majority_answer_scores_no_better_than_its_baseline() -> None:
    majority = np.tile([0.9, 0.1], (50, 1))  # "normal" to everything, equally sure each time
    accuracy = metric_figures(Scoring("accuracy"), Y10, majority)
    assert (accuracy.value, accuracy.interval, accuracy.baseline) == (0.9, (0.9, 0.9), 0.9)  # class counts are kept
    assert accuracy.class_counts == [45, 5] and accuracy.metric == "accuracy"
    auroc = metric_figures(Scoring("auroc"), Y10, majority, draws=100)  # few draws: AUROC's are slow
    assert (auroc.value, auroc.interval, auroc.baseline) == (0.5, (0.5, 0.5), 0.5)
    balanced = metric_figures(Scoring("balanced_accuracy"), Y10, majority)
    assert (balanced.value, balanced.baseline) == (0.5, 0.5)


def test_the_cost_baseline_is_the_cheaper_of_flagging_all_and_none() -> None:
    # at prevalence 0.1 flagging nobody costs 10 x 0.1 = 1.0 per case, flagging everybody 1 x 0.9
    assert constant_baseline(Scoring("expected_cost", cost_fp=1, cost_fn=10), Y10, 2) == pytest.approx(0.9)
    assert constant_baseline(Scoring("expected_cost", cost_fp=1, cost_fn=5), Y10, 2) == pytest.approx(0.5)
    assert constant_baseline(Scoring("accuracy"), np.array([0, 1, 2, 2]), 3) == 0.5


def test_metric_figures_are_the_task_metric_and_its_seeded_interval() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(20, int), np.zeros(180, int)]
    p1 = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, size=200), 0.01, 0.99)
    proba = np.stack([1 - p1, p1], axis=1)
    figures = metric_figures(Scoring("auroc"), y, proba, seed=2, draws=200)
    assert figures.interval == interval(Scoring("auroc"), y, proba, seed=2, draws=200)
    assert figures.interval[0] < figures.value < figures.interval[1] and figures.class_counts == [180, 20]
    healthy = metric_figures(Scoring("auroc"), np.zeros(5, int), proba[:5], draws=10)  # AUROC needs both classes
    assert (healthy.value, healthy.interval, healthy.baseline, healthy.class_counts) == (None, None, None, [5, 0])

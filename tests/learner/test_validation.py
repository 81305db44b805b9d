"""Site validation figures: bootstrap intervals that cover, sensitivities per class, the reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.evaluate import expected_calibration_error
from clreg.learner.validation import bootstrap_interval, reliability, site_figures


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

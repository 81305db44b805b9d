"""Temperature scaling: recovers a known temperature, never raises the NLL it minimises, keeps labels,
shrinks a small site toward the pooled temperature, and reports cross-fitted figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from clreg.learner.calibration import (
    CROSS_FOLDS,
    MIN_SAMPLES,
    calibrate_sites,
    fit_temperature,
    nll,
    out_of_fold_proba,
    scaled_proba,
)
from clreg.learner.errors import DataError


def _sampled(temperature: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): calibrated at exactly that T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 4.0, size=(n, 10))
    p = softmax(logits / temperature, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_recovers_the_temperature_labels_were_drawn_at(true_t: float) -> None:
    logits, y = _sampled(true_t, 20_000)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.05)


def test_fitted_temperature_never_raises_the_nll() -> None:
    logits, y = _sampled(3.0, 500, seed=1)
    t = fit_temperature(logits, y)
    for other in (0.5, 1.0, 2.0, t * 1.1, t / 1.1, 5.0):
        assert nll(logits, y, t) <= nll(logits, y, other) + 1e-9


def test_scaling_keeps_every_label_and_sums_to_one() -> None:
    logits, _ = _sampled(1.0, 200, seed=2)
    for t in (0.3, 1.0, 4.0):
        p = scaled_proba(logits, t)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        assert (p.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_overconfident_logits_get_a_temperature_above_one_and_a_lower_cross_fitted_ece() -> None:
    logits, y = _sampled(3.0, 2_000, seed=3)  # the network is 3x too sure of itself
    pooled, sites = calibrate_sites({"a": (logits, y)})
    fit = sites["a"]
    assert fit.temperature == pytest.approx(3.0, rel=0.1) and pooled.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.samples == pooled.samples == 2_000
    assert fit.ece > 0.15 and fit.ece_calibrated < 0.05
    assert fit.nll_calibrated < fit.nll


def test_each_site_gets_its_own_temperature() -> None:
    hot, cold = _sampled(3.0, 3_000, seed=4), _sampled(0.5, 3_000, seed=5)
    pooled, sites = calibrate_sites({"hot": hot, "cold": cold})
    assert sites["hot"].temperature == pytest.approx(3.0, rel=0.1)
    assert sites["cold"].temperature == pytest.approx(0.5, rel=0.1)
    assert 0.5 < pooled.temperature < 3.0
    for fit in sites.values():  # cross-fitted: own temperature beats the pooled one on each site
        assert fit.ece_calibrated < pooled.ece_calibrated


def test_a_small_site_is_shrunk_toward_the_pooled_temperature() -> None:
    big, small = _sampled(2.0, 5_000, seed=6), _sampled(0.5, 40, seed=7)
    alone = fit_temperature(*small)
    pooled, sites = calibrate_sites({"big": big, "small": small})
    assert abs(np.log(sites["small"].temperature / pooled.temperature)) < abs(np.log(alone / pooled.temperature))
    assert fit_temperature(*small, prior=2.0, prior_sd=1e-3) == pytest.approx(2.0, rel=0.01)


def test_out_of_fold_scoring_never_uses_the_scored_samples() -> None:
    """Flipping the labels of fold-0 samples must leave their own out-of-fold probabilities unchanged."""
    logits, y = _sampled(2.0, 400, seed=8)
    before = out_of_fold_proba({"a": (logits, y)}, folds=2, seed=0)["per_site"]["a"]
    part0 = np.array_split(np.random.default_rng(0).permutation(400), 2)[0]
    flipped = y.copy()
    flipped[part0] = (flipped[part0] + 1) % 10
    after = out_of_fold_proba({"a": (logits, flipped)}, folds=2, seed=0)["per_site"]["a"]
    np.testing.assert_allclose(after[part0], before[part0])
    assert not np.allclose(after[np.setdiff1d(np.arange(400), part0)], before[np.setdiff1d(np.arange(400), part0)])


def test_cross_fitting_takes_as_many_folds_as_the_smallest_site_allows() -> None:
    big, small = _sampled(2.0, 300, seed=9), _sampled(2.0, 12, seed=10)
    _, sites = calibrate_sites({"big": big, "small": small}, folds=CROSS_FOLDS)
    wanted = out_of_fold_proba({"big": big, "small": small}, folds=CROSS_FOLDS, seed=0)["per_site"]
    np.testing.assert_allclose(sites["big"].out_of_fold, wanted["big"])
    _, few = calibrate_sites({"big": big, "small": (small[0][:6], small[1][:6])})  # 6 samples: 6 folds
    six = out_of_fold_proba({"big": big, "small": (small[0][:6], small[1][:6])}, folds=6, seed=0)["per_site"]
    np.testing.assert_allclose(few["big"].out_of_fold, six["big"])


def test_tiny_sets_keep_temperature_one() -> None:
    logits, y = _sampled(3.0, MIN_SAMPLES - 1)
    _, sites = calibrate_sites({"a": (logits, y)})
    assert sites["a"].temperature == 1.0 and sites["a"].ece_calibrated == pytest.approx(sites["a"].ece)


@pytest.mark.parametrize(("logits", "y", "match"), [
    (np.zeros((3, 4)), np.array([0, 1]), "3 labels|2 labels"),
    (np.zeros((2, 4)), np.array([0, 4]), "0..3"),
    (np.zeros(4), np.array([0]), "logits"),
    (np.zeros((0, 4)), np.array([], dtype=int), "at least one"),
])
def test_bad_inputs_name_the_problem(logits: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        calibrate_sites({"a": (logits, y)})

"""The calibration error estimators: the ECE noise floor and the debiased RMS calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.evaluate import calibration_error, ece_floor, expected_calibration_error, squared_calibration_error


def _binary(confidence: np.ndarray) -> np.ndarray:
    """[N, 2] probabilities whose answer is class 1 with the given confidence."""
    return np.stack([1 - confidence, confidence], axis=1)


def _draw(confidence: np.ndarray, rng: np.random.Generator, accuracy_shift: float = 0.0) -> np.ndarray:
    """Labels that are right (class 1) with probability confidence + accuracy_shift."""
    return (rng.random(len(confidence)) < confidence + accuracy_shift).astype(np.int64)


def test_the_floor_is_the_mean_ece_of_labels_drawn_from_the_confidences() -> None:
    confidence = np.random.default_rng(0).uniform(0.55, 0.99, size=80)
    proba, draws = _binary(confidence), 300
    right = np.random.default_rng(7).random((draws, len(confidence))) < confidence  # the floor's own draws
    by_loop = np.mean([expected_calibration_error(r.astype(np.int64), proba) for r in right])
    assert ece_floor(proba, draws=draws, seed=7) == pytest.approx(by_loop, abs=1e-12)


def test_the_floor_shrinks_with_samples_and_is_several_points_on_a_small_site() -> None:
    rng = np.random.default_rng(1)
    small, large = (ece_floor(_binary(rng.uniform(0.8, 1.0, size=n))) for n in (80, 8000))
    assert small > 0.04 and large < 0.01


def test_debiased_error_is_near_zero_for_a_calibrated_model_where_ece_is_not() -> None:
    rng = np.random.default_rng(2)
    errors, eces = [], []
    for _ in range(200):
        confidence = rng.uniform(0.7, 1.0, size=80)
        y = _draw(confidence, rng)
        errors.append(squared_calibration_error(y, _binary(confidence)))
        eces.append(expected_calibration_error(y, _binary(confidence)))
    assert abs(np.mean(errors)) < 0.0005 and np.mean(eces) > 0.04  # squared error unbiased; ECE is not


def test_debiased_error_finds_a_real_gap() -> None:
    rng = np.random.default_rng(3)
    confidence = np.full(4000, 0.9)
    y = _draw(confidence, rng, accuracy_shift=-0.2)  # says 90%, right 70% of the time
    assert calibration_error(y, _binary(confidence)) == pytest.approx(0.2, abs=0.02)


def test_estimators_refuse_empty_or_mismatched_input() -> None:
    with pytest.raises(DataError):
        calibration_error(np.array([1, 0]), _binary(np.array([0.9])))
    with pytest.raises(DataError):
        ece_floor(np.zeros((0, 2)))

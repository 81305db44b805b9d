"""The label-free accuracy estimate: exact on a hand case, unbiased where probabilities are calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from learner.errors import DataError
from learner.estimate import correct_share, expected_accuracy


def test_hand_case() -> None:
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    assert expected_accuracy(proba) == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    # with a threshold of 0.65 the last answer is "negative", right with probability 0.4
    assert expected_accuracy(proba, threshold=0.65) == pytest.approx((0.9 + 0.7 + 0.4) / 3)
    assert correct_share(proba, np.array([0, 1, 1]), threshold=0.65) == pytest.approx(2 / 3)


def test_unbiased_on_calibrated_probabilities() -> None:
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(200):
        logits = rng.normal(size=(500, 4)) * 2
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(4, p=p) for p in proba])  # labels drawn from the probabilities: calibrated
        errors.append(expected_accuracy(proba) - correct_share(proba, y))
    assert abs(np.mean(errors)) < 0.005  # unbiased over many windows
    assert np.std(errors) < 0.03  # and close on one window of 500


def test_overconfidence_overestimates() -> None:
    rng = np.random.default_rng(1)
    proba = np.column_stack([np.full(1000, 0.05), np.full(1000, 0.95)])
    y = (rng.random(1000) < 0.7).astype(int)  # truly right 70% of the time, 95% sure
    assert expected_accuracy(proba) - correct_share(proba, y) > 0.2


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(DataError, match="probabilities"):
        expected_accuracy(np.ones(3))
    with pytest.raises(DataError, match="binary"):
        expected_accuracy(np.full((2, 3), 1 / 3), threshold=0.5)

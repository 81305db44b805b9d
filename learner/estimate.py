"""Accuracy without labels: what calibrated probabilities say a model's accuracy is on unlabelled traffic.

With calibrated probabilities, the chance that an answer is right is the probability of the class it
names, so the mean of those is an unbiased estimate of accuracy on the same traffic (NannyML's CBPE).
It holds only while calibration holds: under a shift the estimate says how sure the model is, not how
right, which is why it is compared with the labelled accuracy whenever labels arrive.
"""

from __future__ import annotations

import numpy as np

from learner.errors import DataError


def expected_correct(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Each answer's probability of being right: of the argmax class, or for a binary model with a decision
    threshold, of the side of the threshold the positive score falls on."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) == 0 or proba.shape[1] < 2:
        raise DataError(f"need class probabilities [N, C>=2] with N >= 1, got shape {proba.shape}")
    if threshold is None:
        return proba.max(axis=1)
    if proba.shape[1] != 2:
        raise DataError("a decision threshold applies to binary models only")
    positive = proba[:, 1]
    return np.where(positive >= threshold, positive, 1.0 - positive)


def expected_accuracy(proba: np.ndarray, threshold: float | None = None) -> float:
    """The estimated accuracy: the mean of `expected_correct`."""
    return float(expected_correct(proba, threshold).mean())


def correct_share(proba: np.ndarray, y: np.ndarray, threshold: float | None = None) -> float:
    """The realised accuracy of the same decision rule, for comparison when labels are known."""
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y)
    pred = proba.argmax(axis=1) if threshold is None else (proba[:, 1] >= threshold).astype(int)
    return float((pred == y).mean())

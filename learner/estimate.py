"""Accuracy without labels: what calibrated probabilities say a model's accuracy is on unlabelled traffic.

With calibrated probabilities, the chance that an answer is right is the probability of the class it
names, so the mean of those is an unbiased estimate of accuracy on the same traffic (NannyML's CBPE).
It holds only while calibration holds: under a shift the estimate says how sure the model is, not how
right, which is why it is compared with the labelled accuracy whenever labels arrive.

Some shifts make a network surer and wronger at once (pixel noise from a failing scanner), which no estimate
built on confidence alone can see. `checked_accuracy` adds a second look: the same network with BatchNorm
statistics taken from the traffic itself (AdaBN). On the traffic a site was validated on the two answer
alike and equally surely; where the inputs moved under the network's normalisation, answers flip or lose
confidence. An answer is credited with the lower of the two views' confidence in it, and one that flips with
nothing (of the variants tried on selection seeds, the one that followed pixel noise furthest while staying
within 1.4 points on unshifted traffic; see bench/sites.py).
"""

from __future__ import annotations

from typing import cast

import numpy as np
from scipy.special import softmax
from torch import nn

from clreg.learner.errors import DataError
from clreg.learner.evaluate import predict_logits
from clreg.learner.models import to_tensor
from clreg.learner.sitebn import adapted


def expected_correct(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Each answer's probability of being right: of the argmax class, or for a binary model with a decision
    threshold, of the side of the threshold the positive score falls on."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) == 0 or proba.shape[1] < 2:
        raise DataError(f"need class probabilities [N, C>=2] with N >= 1, got shape {proba.shape}")
    if threshold is None:
        return cast(np.ndarray, proba.max(axis=1))
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
    return float((decisions(proba, threshold) == y).mean())


def decisions(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The answers a decision rule gives: the argmax class, or for a binary model the side of its threshold."""
    return proba.argmax(axis=1) if threshold is None else (proba[:, 1] >= threshold).astype(int)


def two_views(net: nn.Module, x: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities of x as served (softmax of logits / temperature) and as the same network gives them
    with BatchNorm statistics taken from x itself (`learner.sitebn.adapted`)."""
    served = softmax(predict_logits(net, x) / temperature, axis=1)
    own = softmax(predict_logits(adapted(net, to_tensor(x)), x) / temperature, axis=1)
    return served, own


def stable(served: np.ndarray, own: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Per answer, whether both views give it."""
    if served.shape != own.shape:
        raise DataError(f"the two views must have one shape, got {served.shape} and {own.shape}")
    return cast(np.ndarray, decisions(served, threshold) == decisions(own, threshold))


def checked_accuracy(served: np.ndarray, own: np.ndarray, threshold: float | None = None) -> float:
    """The mean over answers of the lower of the two views' probabilities that the answer is right, an answer
    the views disagree on counting as wrong: `expected_accuracy` where both views agree exactly, never above it."""
    same = stable(served, own, threshold)
    sure = np.minimum(expected_correct(served, threshold), expected_correct(own, threshold))
    return float(np.where(same, sure, 0.0).mean())

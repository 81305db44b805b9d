"""Operating points of a binary model on one site: what a threshold means there.

Sensitivity and specificity belong to the model and the threshold; the positive and negative
predictive values also depend on the site's prevalence, which is why a threshold is chosen per site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from learner.errors import DataError


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion-matrix figures at one threshold (a sample is positive when its score >= threshold).

    A figure whose denominator is empty (no positives, nothing flagged, ...) is None, not a guess.
    """

    threshold: float
    samples: int
    prevalence: float
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    flagged: float  # share of samples at or above the threshold

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if scores.ndim != 1 or scores.shape != labels.shape or len(scores) == 0:
        raise DataError(f"need one score per label and at least one, got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise DataError("operating points need binary labels (0 or 1)")
    return scores, labels


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    """Sensitivity, specificity, PPV and NPV of `scores >= threshold` against the labels."""
    scores, labels = _check(scores, labels)
    flagged = scores >= threshold
    tp, fp = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
    fn, tn = int((~flagged & (labels == 1)).sum()), int((~flagged & (labels == 0)).sum())
    return OperatingPoint(threshold=float(threshold), samples=len(labels), prevalence=float(labels.mean()),
                          sensitivity=_ratio(tp, tp + fn), specificity=_ratio(tn, tn + fp),
                          ppv=_ratio(tp, tp + fp), npv=_ratio(tn, tn + fn), flagged=float(flagged.mean()))


def threshold_for_sensitivity(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity reaches `target` (the most specific such rule).

    Raises:
        DataError: no positive samples, or a target outside (0, 1].
    """
    scores, labels = _check(scores, labels)
    if not 0 < target <= 1:
        raise DataError(f"target sensitivity must lie in (0, 1], got {target}")
    positives = np.sort(scores[labels == 1])[::-1]
    if len(positives) == 0:
        raise DataError("no positive samples: no sensitivity can be reached or measured")
    # flagging the k highest-scoring positives needs threshold <= the k-th score
    needed = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[needed - 1])

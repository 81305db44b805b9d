"""Operating points of a binary model on one site: what a threshold means there.

Sensitivity and specificity belong to the model and the threshold; the positive and negative
predictive values also depend on the site's prevalence, which is why a threshold is chosen per site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from clreg.learner.errors import DataError


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


@dataclass(frozen=True)
class Costs:
    """What each kind of error costs at a site, in any one unit (a missed case is usually dearer)."""

    false_positive: float
    false_negative: float

    def __post_init__(self) -> None:
        if self.false_positive < 0 or self.false_negative < 0 or self.false_positive + self.false_negative == 0:
            raise DataError(f"costs must be >= 0 and not both 0, got fp={self.false_positive} "
                            f"fn={self.false_negative}")


def expected_cost(point: OperatingPoint, costs: Costs, prevalence: float | None = None) -> float:
    """Expected cost per case of a threshold at a prevalence (the held-out one by default):
    fp cost x (1 - specificity) x (1 - prevalence) + fn cost x (1 - sensitivity) x prevalence.

    Sensitivity and specificity do not depend on prevalence, so one held-out set prices every prevalence.
    """
    p = point.prevalence if prevalence is None else prevalence
    if not 0 <= p <= 1:
        raise DataError(f"prevalence must lie in [0, 1], got {p}")
    miss = 0.0 if point.sensitivity is None else 1 - point.sensitivity
    alarm = 0.0 if point.specificity is None else 1 - point.specificity
    return costs.false_positive * alarm * (1 - p) + costs.false_negative * miss * p


def threshold_for_cost(scores: np.ndarray, labels: np.ndarray, costs: Costs,
                       prevalence: float | None = None) -> float:
    """The threshold with the lowest expected cost at `prevalence` (the held-out one by default) among every
    distinct score and "flag nothing"; ties go to the highest threshold (fewest flagged).

    Raises:
        DataError: labels of one class only (one error rate cannot be measured).
    """
    scores, labels = _check(scores, labels)
    if labels.min() == labels.max():
        raise DataError("need positive and negative held-out samples to price both kinds of error")
    nothing = min(float(np.nextafter(scores.max(), 2.0)), 1.0)  # flags nothing (a threshold stays in [0, 1])
    candidates = np.append(np.unique(scores), nothing)
    # rounded so that costs equal but for float noise tie, and the tie rule decides
    priced = [(round(expected_cost(operating_point(scores, labels, float(t)), costs, prevalence), 12), -float(t))
              for t in candidates]
    return -min(priced)[1]

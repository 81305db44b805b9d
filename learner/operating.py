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


LEVEL = 0.95
DRAWS = 1000  # as learner.taskmetric's intervals


@dataclass(frozen=True)
class PointInterval:
    """How sure an operating point's figures are: their 95% class-stratified bootstrap intervals over the held-out
    set and the positives and negatives they rest on. An interval is None where its class is absent (or, for the
    expected cost, where no costs were given)."""

    positives: int
    negatives: int
    sensitivity_interval: tuple[float, float] | None
    specificity_interval: tuple[float, float] | None
    expected_cost_interval: tuple[float, float] | None

    def as_dict(self) -> dict[str, int | tuple[float, float] | None]:
        return asdict(self)


def _bounds(values: np.ndarray | None, level: float) -> tuple[float, float] | None:
    if values is None:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def point_interval(scores: np.ndarray, labels: np.ndarray, threshold: float, costs: Costs | None = None,
                   prevalence: float | None = None, level: float = LEVEL, draws: int = DRAWS,
                   seed: int = 0) -> PointInterval:
    """Intervals of a threshold's sensitivity, specificity and (with costs) expected cost at `prevalence` (the
    held-out one by default), each class resampled with replacement within itself (seeded).

    The draws are learner.taskmetric's (same classes in the same order from the same seed), so the cost interval
    is `taskmetric.interval` of expected_cost at this threshold. The threshold is held fixed: a threshold chosen on
    these samples looks better on them than it will on new ones, which the interval does not show.
    """
    scores, labels = _check(scores, labels)
    p = float(labels.mean()) if prevalence is None else prevalence
    if not 0 <= p <= 1:
        raise DataError(f"prevalence must lie in [0, 1], got {p}")
    flagged = scores >= threshold
    rng = np.random.default_rng(seed)
    shares = {}  # class -> the share flagged among that class in each resample
    for k in np.unique(labels):
        own = flagged[labels == k]
        shares[int(k)] = rng.choice(own, size=(draws, len(own))).mean(axis=1)
    found, alarm = shares.get(1), shares.get(0)
    cost = None
    if costs is not None:
        miss_rate = np.zeros(draws) if found is None else 1 - found
        alarm_rate = np.zeros(draws) if alarm is None else alarm
        cost = costs.false_positive * alarm_rate * (1 - p) + costs.false_negative * miss_rate * p
    return PointInterval(positives=int((labels == 1).sum()), negatives=int((labels == 0).sum()),
                         sensitivity_interval=_bounds(found, level),
                         specificity_interval=_bounds(None if alarm is None else 1 - alarm, level),
                         expected_cost_interval=_bounds(cost, level))


def cost_threshold_shortfall(labels: np.ndarray, min_positives: int, min_negatives: int) -> str | None:
    """Why a threshold chosen by cost on these held-out labels is not to be recommended (None: it may be).

    The cheapest threshold on 5 positives is fitted to those 5: on new images it can cost more than plain 0.5.
    """
    labels = np.asarray(labels).astype(np.int64)
    counts = {"positive": int((labels == 1).sum()), "negative": int((labels == 0).sum())}
    needs = {"positive": min_positives, "negative": min_negatives}
    short = [kind for kind in counts if counts[kind] < needs[kind]]
    if not short:
        return None
    clauses = [f"{counts[k]} {k}{'' if counts[k] == 1 else 's'} in the held-out set, fewer than the {needs[k]} "
               "needed to choose a threshold by cost" for k in short]
    return "; ".join(clauses) + "; use 0.5 or push more labelled " + " and ".join(f"{k}s" for k in short)

"""What a version's answers are worth at one site, from its held-out set: the task metric, accuracy and per-class
sensitivity with bootstrap intervals, and the reliability diagram before and after calibration.

A site is trusted on the lower end of these intervals, not the point figure: 40 held-out images at 90%
accuracy cannot rule out 78%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clreg.learner import taskmetric
from clreg.learner.errors import DataError
from clreg.learner.evaluate import ECE_BINS

LEVEL = 0.95
DRAWS = 2000


def bootstrap_interval(values: np.ndarray, level: float = LEVEL, draws: int = DRAWS,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement, seeded)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise DataError(f"need a non-empty 1-d sample, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """The reliability diagram ECE is computed from: per non-empty confidence bin (lo, hi], the mean confidence,
    the accuracy and the count."""
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            out.append((float(confidence[inside].mean()), float(correct[inside].mean()), int(inside.sum())))
    return out


@dataclass(frozen=True)
class SiteFigures:
    """A site's held-out figures under one version (intervals at LEVEL)."""

    accuracy: float
    accuracy_interval: tuple[float, float]
    sensitivity: dict[str, tuple[float, float, float]]  # class -> (share found, low, high), classes present
    reliability_before: list[tuple[float, float, int]]
    reliability_after: list[tuple[float, float, int]]


def site_figures(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, seed: int = 0) -> SiteFigures:
    """Figures of one site from its labels and the probabilities before (temperature 1) and after (cross-fitted)
    calibration; the labels answered are the same in both (scaling keeps the argmax)."""
    y = np.asarray(y).astype(np.int64)
    if raw.shape != calibrated.shape or len(y) != len(raw) or len(y) == 0:
        raise DataError(f"need N labels and two [N, K] probability arrays, got {len(y)}, {raw.shape}, "
                        f"{calibrated.shape}")
    correct = (raw.argmax(axis=1) == y).astype(np.float64)
    sensitivity = {}
    for k in np.unique(y):
        found = correct[y == k]
        sensitivity[str(int(k))] = (float(found.mean()), *bootstrap_interval(found, seed=seed + int(k) + 1))
    return SiteFigures(accuracy=float(correct.mean()), accuracy_interval=bootstrap_interval(correct, seed=seed),
                       sensitivity=sensitivity, reliability_before=reliability(y, raw),
                       reliability_after=reliability(y, calibrated))


@dataclass(frozen=True)
class MetricFigures:
    """The task metric at a site: its value, its 95% class-stratified bootstrap interval, what the best constant
    answer scores (None where undefined), and the held-out count of each class it rests on."""

    metric: taskmetric.Metric
    value: float | None  # None where the metric is undefined (AUROC of a one-class set)
    interval: tuple[float, float] | None
    baseline: float | None
    class_counts: list[int]


def constant_baseline(scoring: taskmetric.Scoring, y: np.ndarray, classes: int) -> float | None:
    """The metric of the best answer that ignores the image (every image the same class, fully sure): at a 10%
    site the majority's accuracy 0.9, AUROC 0.5, the cheaper of flagging everything and nothing."""
    values = [taskmetric.value(scoring, y, np.tile(np.eye(classes)[k], (len(y), 1))) for k in range(classes)]
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return None
    return max(values) if scoring.higher_is_better else min(values)


def metric_figures(scoring: taskmetric.Scoring, y: np.ndarray, proba: np.ndarray, seed: int = 0,
                   draws: int = taskmetric.DRAWS) -> MetricFigures:
    """The task metric of probabilities [N, K] (the cross-fitted calibrated ones) against the held-out labels.

    Raises:
        DataError: shapes disagree, or expected_cost on a model that is not binary.
    """
    y = np.asarray(y).astype(np.int64)
    found = taskmetric.value(scoring, y, proba)
    low, high = taskmetric.interval(scoring, y, proba, level=LEVEL, draws=draws, seed=seed)
    defined = not np.isnan(found)
    return MetricFigures(metric=scoring.metric, value=found if defined else None,
                         interval=(low, high) if defined and not np.isnan(low) else None,
                         baseline=constant_baseline(scoring, y, proba.shape[1]),
                         class_counts=np.bincount(y, minlength=proba.shape[1]).astype(int).tolist())

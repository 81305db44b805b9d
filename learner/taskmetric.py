"""A model's task metric on one held-out set, its interval, and the paired change between two models.

At a 10%-prevalence site a model answering only "normal" scores 0.9 accuracy, so a binary model is judged by
AUROC unless told otherwise; `expected_cost` prices both kinds of error at the site's prevalence. Held-out sets
are small, so every comparison is a bound: accuracy's paired change uses the normal approximation on
per-sample differences (exact enough, and what the gate always used); the other metrics are not sums over
samples and take a paired bootstrap, stratified by class so every resample has both classes (AUROC needs them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, cast

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from clreg.learner.errors import DataError

Metric = Literal["accuracy", "balanced_accuracy", "auroc", "expected_cost"]
METRICS: tuple[Metric, ...] = ("accuracy", "balanced_accuracy", "auroc", "expected_cost")
DRAWS = 1000


@dataclass(frozen=True)
class Scoring:
    """How a held-out set is scored: the metric, and for expected_cost the error costs, the threshold on
    P(class 1) and the prevalence priced (None: the held-out set's own)."""

    metric: Metric = "accuracy"
    cost_fp: float = 1.0
    cost_fn: float = 1.0
    threshold: float = 0.5
    prevalence: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "expected_cost"


@dataclass(frozen=True)
class Paired:
    """Candidate against production on the same samples, oriented so that positive means the candidate is better.

    `se` is the standard error of `delta`; `lower_bound` its one-sided bound at the given confidence.
    """

    delta: float
    lower_bound: float
    se: float


def _check(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, proba = np.asarray(y).astype(np.int64), np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(y) != len(proba) or len(y) == 0:
        raise DataError(f"need N labels and [N, K] probabilities, got {len(y)} and {proba.shape}")
    return y, proba


def value(scoring: Scoring, y: np.ndarray, proba: np.ndarray) -> float:
    """The metric of probabilities [N, K] against labels [N]; nan where it is undefined (AUROC of one class).

    Raises:
        DataError: shapes disagree, or expected_cost on a model that is not binary.
    """
    y, proba = _check(y, proba)
    return _value(scoring, y, proba)


def _value(scoring: Scoring, y: np.ndarray, proba: np.ndarray) -> float:
    metric = scoring.metric
    if metric == "accuracy":
        return float(np.mean(proba.argmax(axis=1) == y))
    if metric == "balanced_accuracy":
        pred = proba.argmax(axis=1)
        return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))
    present = np.unique(y)
    if metric == "auroc":
        if len(present) < 2:
            return float("nan")
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in present]))
    if proba.shape[1] != 2:
        raise DataError("expected_cost prices a binary model's two kinds of error; this model has "
                        f"{proba.shape[1]} classes")
    return _cost(scoring, y, proba[:, 1] >= scoring.threshold)


def _cost(scoring: Scoring, y: np.ndarray, flagged: np.ndarray) -> float:
    """fp cost x (1 - specificity) x (1 - p) + fn cost x (1 - sensitivity) x p, per case."""
    p = float(np.mean(y == 1)) if scoring.prevalence is None else scoring.prevalence
    pos, neg = y == 1, y == 0
    miss = float(np.mean(~flagged[pos])) if pos.any() else 0.0
    alarm = float(np.mean(flagged[neg])) if neg.any() else 0.0
    return scoring.cost_fp * alarm * (1 - p) + scoring.cost_fn * miss * p


def _resamples(y: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """[draws, N] indices, resampled with replacement within each class (class counts kept)."""
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(y == k), size=(draws, int(np.sum(y == k)))) for k in np.unique(y)]
    return np.concatenate(parts, axis=1)


def _values(scoring: Scoring, y: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on every resample at once: idx [draws, N] indexes (y, proba); the same figures as `_value` on
    each row, without a Python loop over draws (AUROC from ranks: the Mann-Whitney U of the positives)."""
    yb, pb = y[idx], proba[idx]  # [D, N], [D, N, K]
    metric = scoring.metric
    if metric == "accuracy":
        return cast(np.ndarray, np.mean(pb.argmax(axis=2) == yb, axis=1))
    if metric == "balanced_accuracy":
        pred = pb.argmax(axis=2)
        return cast(np.ndarray, np.mean([np.sum((pred == k) & (yb == k), axis=1) / np.sum(yb == k, axis=1)
                                         for k in np.unique(y)], axis=0))
    if metric == "auroc" and proba.shape[1] == 2:
        if len(np.unique(y)) < 2:
            return np.full(len(idx), np.nan)
        ranks = rankdata(pb[:, :, 1], axis=1)  # ties share their mean rank, as roc_auc_score counts them half
        pos = yb == 1
        n1, n0 = pos.sum(axis=1), (~pos).sum(axis=1)
        return cast(np.ndarray, ((ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0))
    if metric == "expected_cost" and proba.shape[1] == 2:
        flagged, pos = pb[:, :, 1] >= scoring.threshold, yb == 1
        n1, n0 = pos.sum(axis=1), (~pos).sum(axis=1)
        p = n1 / (n1 + n0) if scoring.prevalence is None else np.full(len(idx), scoring.prevalence)
        miss = np.where(n1 > 0, (~flagged & pos).sum(axis=1) / np.maximum(n1, 1), 0.0)
        alarm = np.where(n0 > 0, (flagged & ~pos).sum(axis=1) / np.maximum(n0, 1), 0.0)
        return cast(np.ndarray, scoring.cost_fp * alarm * (1 - p) + scoring.cost_fn * miss * p)
    return np.array([_value(scoring, y[i], proba[i]) for i in idx])


def interval(scoring: Scoring, y: np.ndarray, proba: np.ndarray, level: float = 0.95, draws: int = DRAWS,
             seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the metric under a class-stratified bootstrap of the samples (seeded)."""
    y, proba = _check(y, proba)
    values = _values(scoring, y, proba, _resamples(y, draws, seed))
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_change(scoring: Scoring, y: np.ndarray, candidate: np.ndarray, production: np.ndarray,
                  confidence: float, draws: int = DRAWS, seed: int = 0) -> Paired:
    """The candidate's change against production on the same samples, with its one-sided lower bound.

    Raises:
        DataError: the two probability arrays do not have the same shape as each other and the labels.
    """
    y, cand = _check(y, candidate)
    _, prod = _check(y, production)
    if cand.shape != prod.shape:
        raise DataError(f"candidate and production answered differently shaped sets: {cand.shape}, {prod.shape}")
    z = NormalDist().inv_cdf(confidence)
    sign = 1.0 if scoring.higher_is_better else -1.0
    delta = sign * (_value(scoring, y, cand) - _value(scoring, y, prod))
    if scoring.metric == "accuracy":
        d = (cand.argmax(axis=1) == y).astype(np.float64) - (prod.argmax(axis=1) == y)
        se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        return Paired(delta, delta - z * se, se)
    idx = _resamples(y, draws, seed)
    diffs = sign * (_values(scoring, y, cand, idx) - _values(scoring, y, prod, idx))
    diffs = diffs[~np.isnan(diffs)]
    if math.isnan(delta) or len(diffs) < 2:
        return Paired(delta, -math.inf, math.inf)
    se = float(diffs.std(ddof=1))
    return Paired(delta, float(np.quantile(diffs, 1 - confidence)), se)


def detectable_drop(se: float, confidence: float) -> float:
    """The smallest change a set of this standard error distinguishes from none at the confidence: z x se."""
    return NormalDist().inv_cdf(confidence) * se


def samples_needed(samples: int, drop: float, target: float) -> int:
    """How many samples in all bring a detectable drop `drop` (measured on `samples`) down to `target`:
    the standard error falls as 1 / sqrt(n)."""
    if drop <= target:
        return samples
    return math.ceil(samples * (drop / target) ** 2)


def one_image(scoring: Scoring, y: np.ndarray, classes: int) -> float:
    """The most one held-out image can move the metric on this set (a changed answer, or for AUROC one case's
    rank moved from one end to the other): how coarse the set's figure is. inf where the metric is undefined.
    accuracy 1/N; balanced accuracy 1/(K n_min); AUROC 1/min(n_pos, n_neg) (binary; one-vs-rest: 1/n_min);
    expected cost the larger of cost_fn p / n_pos and cost_fp (1 - p) / n_neg."""
    counts = np.bincount(np.asarray(y).astype(np.int64), minlength=classes)
    present = counts[counts > 0]
    if len(present) == 0:
        return math.inf
    if scoring.metric == "accuracy":
        return 1.0 / int(counts.sum())
    if scoring.metric == "balanced_accuracy":
        return 1.0 / (len(present) * int(present.min()))
    if len(present) < 2:
        return math.inf
    if scoring.metric == "auroc":
        return 1.0 / int(present.min())
    p = counts[1] / counts.sum() if scoring.prevalence is None else scoring.prevalence
    return cast(float, max(scoring.cost_fn * p / counts[1], scoring.cost_fp * (1 - p) / counts[0]))

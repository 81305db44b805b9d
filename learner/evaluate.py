"""Evaluation: per-site metrics and the continual-learning summary of an accuracy matrix."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from torch import nn

from clreg.learner.errors import DataError
from clreg.learner.models import to_tensor
from clreg.learner.sitebn import apply_site_bn

ECE_BINS = 15


@dataclass
class SiteMetrics:
    """One model on one site's held-out set; `correct` keeps paired outcomes for the gate."""

    samples: int
    accuracy: float
    balanced_accuracy: float
    auroc: float
    ece: float
    correct: np.ndarray


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits [N, K] as float64, in eval mode, without gradients."""
    xt = to_tensor(x)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = [model(xt[i : i + batch_size].to(device)).cpu() for i in range(0, len(xt), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, 0))


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities [N, K] as float64 (softmax of `predict_logits`)."""
    logits = predict_logits(model, x, batch_size)
    return softmax(logits, axis=1) if logits.size else logits


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in y."""
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def auroc_ovr(y: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest macro AUROC over classes present in y; nan when fewer than two classes are present."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in present]))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins (lo, hi] of |accuracy - confidence| weighted by bin share."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Index of each confidence's equal-width bin (lo, hi], as `expected_calibration_error` bins them."""
    return cast(np.ndarray, np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1))


def ece_floor(proba: np.ndarray, bins: int = ECE_BINS, draws: int = 500, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model answering with these confidences would show on this many samples:
    the mean ECE when each answer is right with exactly its stated confidence (simulated, seeded).

    ECE is an absolute value of a noisy mean per bin, so it is positive even then; on 100 samples at 90%
    accuracy this floor is several points, which a measured ECE cannot go below except by luck.
    """
    confidence = np.asarray(proba, dtype=np.float64).max(axis=1)
    if len(confidence) == 0:
        raise DataError("need at least one sample")
    where = np.eye(bins)[_bins(confidence, bins)]  # [N, bins] one-hot
    rng = np.random.default_rng(seed)
    right = (rng.random((draws, len(confidence))) < confidence).astype(np.float64)
    gaps = np.abs(right @ where - confidence @ where)  # per draw and bin: |correct - confidence| summed
    return float(gaps.sum(axis=1).mean() / len(confidence))


def squared_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Debiased squared calibration error (Kumar, Liang and Ma 2019): over equal-mass confidence bins, the squared
    gap between accuracy and confidence minus its sampling variance, weighted by bin share.

    An unbiased estimate, so it can come out below zero on a well calibrated sample; averaged over seeds or
    sites it converges to the truth, where the binned ECE converges to the truth plus its noise floor.
    Bins with a single sample carry no variance estimate and are left out.
    """
    y = np.asarray(y).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if len(y) == 0 or len(y) != len(proba):
        raise DataError(f"need N labels and [N, K] probabilities, got {len(y)} and {proba.shape}")
    confidence, correct = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(np.float64)
    total = 0.0
    for part in np.array_split(np.argsort(confidence, kind="stable"), min(bins, len(y))):
        if len(part) < 2:
            continue
        acc, conf = correct[part].mean(), confidence[part].mean()
        total += len(part) / len(y) * ((acc - conf) ** 2 - acc * (1 - acc) / (len(part) - 1))
    return float(total)


def calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Root of `squared_calibration_error` (0 where that is negative): a root mean square gap, so at least the
    mean absolute gap on the same bins; a site within a limit on this is within it on that too."""
    return float(np.sqrt(max(squared_calibration_error(y, proba, bins), 0.0)))


def site_metrics(
    model: nn.Module, x: np.ndarray, y: np.ndarray, site_bn: Mapping[str, torch.Tensor] | None = None
) -> SiteMetrics:
    """Accuracy, balanced accuracy, AUROC, ECE and per-sample correctness of the model on (x, y).

    site_bn (a learner.sitebn entry) evaluates a copy of the model carrying that site's own BatchNorm.

    Raises:
        DataError: no samples, or x and y differ in length.
        WeightsError: site_bn does not fit the model.
    """
    y = np.asarray(y).astype(np.int64)
    if len(y) == 0 or len(y) != len(x):
        raise DataError(f"need one label per image and at least one image, got {len(x)} images and {len(y)} labels")
    if site_bn is not None:
        model = copy.deepcopy(model)
        apply_site_bn(model, site_bn)
    proba = predict_proba(model, x)
    correct = proba.argmax(axis=1) == y
    return SiteMetrics(
        samples=len(y),
        accuracy=float(correct.mean()),
        balanced_accuracy=balanced_accuracy(y, proba.argmax(axis=1)),
        auroc=auroc_ovr(y, proba),
        ece=expected_calibration_error(y, proba),
        correct=correct,
    )


def continual_summary(R: np.ndarray) -> dict[str, float]:
    """ACC, BWT (Lopez-Paz & Ranzato 2017) and forgetting (Chaudhry et al. 2018) of a T x T accuracy matrix.

    R[i][j] is the accuracy on site j after training on site i. ACC = mean_j R[T-1, j];
    BWT = mean_{j<T-1} (R[T-1, j] - R[j, j]); forgetting = mean_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j]).
    With one site, BWT and forgetting are 0 (nothing could be forgotten yet).

    Raises:
        DataError: R is not a non-empty square matrix.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise DataError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    last = R.shape[0] - 1
    acc = float(R[last].mean())
    if last == 0:
        return {"ACC": acc, "BWT": 0.0, "forgetting": 0.0}
    bwt = float(np.mean([R[last, j] - R[j, j] for j in range(last)]))
    forgetting = float(np.mean([R[:last, j].max() - R[last, j] for j in range(last)]))
    return {"ACC": acc, "BWT": bwt, "forgetting": forgetting}

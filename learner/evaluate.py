"""Evaluation: per-site metrics and the continual-learning summary of an accuracy matrix."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from torch import nn

from learner.errors import DataError
from learner.models import to_tensor
from learner.sitebn import apply_site_bn

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

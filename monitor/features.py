"""Images -> the feature table drift is tested on: PCA of model embeddings plus image statistics.

The reference (the data the production model was trained on) fixes the PCA basis; every later batch is
projected onto that same basis, so the columns of a batch and of the reference mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from clreg.monitor.errors import InvalidInput, InvalidReference

EmbedFn = Callable[[np.ndarray], np.ndarray]
"""Images [N, C, H, W] float32 in [0, 1] -> embeddings [N, D] (e.g. a model's penultimate layer)."""

IMAGE_STAT_COLUMNS: tuple[str, ...] = (
    "img_mean",
    "img_std",
    "img_p10",
    "img_p50",
    "img_p90",
    "img_entropy",
    "img_laplacian",
)
LABEL_COLUMN = "label"
EMBEDDING_PREFIX = "emb_"
HISTOGRAM_BINS = 32


class FeatureConfig(BaseModel):
    """How the reference feature space is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pca_components: int = Field(default=16, ge=1, le=512)
    # Share of the reference images used only to fit the PCA; the rest form the reference table. Top
    # components fitted on the same rows overstate those rows' spread (in-sample eigenvalue bias), which
    # K-S then flags as drift on every fresh batch. 0 fits and tabulates all rows (biased; tests only).
    pca_fit_share: float = Field(default=0.5, ge=0.0, lt=1.0)
    seed: int = 0


def embedding_columns(k: int) -> list[str]:
    """Names of the k PCA columns: emb_0 .. emb_{k-1}."""
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(k)]


def _as_images(x: np.ndarray) -> np.ndarray:
    """Check images and give them as float64 [N, C, H, W] ([N, H, W] gets one channel)."""
    if not isinstance(x, np.ndarray) or x.ndim not in (3, 4):
        raise InvalidInput(f"images must be a numpy array [N,C,H,W] or [N,H,W], got {getattr(x, 'shape', type(x))}")
    images = x[:, None] if x.ndim == 3 else x
    if images.shape[0] < 1 or images.shape[-1] < 3 or images.shape[-2] < 3:
        raise InvalidInput(f"need at least one image of at least 3x3 pixels, got shape {x.shape}")
    images = images.astype(np.float64, copy=False)
    if not np.isfinite(images).all():
        raise InvalidInput("images contain NaN or infinite values")
    return images


def image_statistics(x: np.ndarray) -> np.ndarray:
    """Per-image intensity statistics [N, 7] in IMAGE_STAT_COLUMNS order: cheap, model-free shift signals.

    Channels are pooled. The entropy (bits) is of a 32-bin histogram over [0, 1] (values outside are
    clipped into the end bins); the Laplacian is the mean absolute 4-neighbour Laplacian of the interior
    pixels, a sharpness/noise measure.
    """
    images = _as_images(x)
    n = images.shape[0]
    flat = images.reshape(n, -1)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    p10, p50, p90 = np.percentile(flat, [10, 50, 90], axis=1)
    entropy = _histogram_entropy(flat)
    centre = images[:, :, 1:-1, 1:-1]
    laplacian = (
        4.0 * centre
        - images[:, :, :-2, 1:-1]
        - images[:, :, 2:, 1:-1]
        - images[:, :, 1:-1, :-2]
        - images[:, :, 1:-1, 2:]
    )
    sharpness = np.abs(laplacian).reshape(n, -1).mean(axis=1)
    return np.stack([mean, std, p10, p50, p90, entropy, sharpness], axis=1)


def _histogram_entropy(flat: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row's 32-bin histogram over [0, 1]."""
    n, pixels = flat.shape
    bins = np.clip(np.floor(flat * HISTOGRAM_BINS), 0, HISTOGRAM_BINS - 1).astype(np.int64)
    # One bincount over offset bin ids counts every image's histogram without a Python loop.
    offsets = (np.arange(n, dtype=np.int64) * HISTOGRAM_BINS)[:, None]
    counts = np.bincount((bins + offsets).ravel(), minlength=n * HISTOGRAM_BINS).reshape(n, HISTOGRAM_BINS)
    p = counts / pixels
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return cast(np.ndarray, terms.sum(axis=1))


@dataclass
class Reference:
    """The drift reference: the PCA basis of the reference embeddings and the reference feature table."""

    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [k, D]
    features: pd.DataFrame  # emb_0..emb_{k-1}, IMAGE_STAT_COLUMNS, label

    @property
    def feature_columns(self) -> list[str]:
        """The columns drift is tested on (everything but the label)."""
        return [c for c in self.features.columns if c != LABEL_COLUMN]

    @property
    def embedding_columns(self) -> list[str]:
        """The PCA columns, for the embedding MMD."""
        return embedding_columns(self.pca_components.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (no objects) for np.savez, so loading never needs pickle."""
        columns = self.feature_columns
        return {
            "pca_mean": np.asarray(self.pca_mean, dtype=np.float64),
            "pca_components": np.asarray(self.pca_components, dtype=np.float64),
            "feature_columns": np.array(columns, dtype=np.str_),
            "feature_values": self.features[columns].to_numpy(dtype=np.float64),
            "labels": self.features[LABEL_COLUMN].to_numpy(dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Reference:
        """Rebuild a Reference from to_arrays() output (e.g. an np.load of the saved npz).

        Raises:
            InvalidReference: a key is missing or the shapes disagree.
        """
        missing = {"pca_mean", "pca_components", "feature_columns", "feature_values", "labels"} - set(arrays)
        if missing:
            raise InvalidReference(f"reference arrays lack {sorted(missing)}")
        mean = np.asarray(arrays["pca_mean"], dtype=np.float64)
        components = np.asarray(arrays["pca_components"], dtype=np.float64)
        columns = [str(c) for c in np.asarray(arrays["feature_columns"]).tolist()]
        values = np.asarray(arrays["feature_values"], dtype=np.float64)
        labels = np.asarray(arrays["labels"], dtype=np.int64)
        k = components.shape[0] if components.ndim == 2 else -1
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise InvalidReference(f"PCA shapes disagree: mean {mean.shape}, components {components.shape}")
        if columns != embedding_columns(k) + list(IMAGE_STAT_COLUMNS):
            raise InvalidReference(f"unexpected feature columns {columns} for {k} PCA components")
        if values.shape != (labels.shape[0], len(columns)) or labels.ndim != 1:
            raise InvalidReference(
                f"feature values {values.shape} do not match {len(columns)} columns x labels {labels.shape}"
            )
        features = pd.DataFrame(values, columns=columns)
        features[LABEL_COLUMN] = labels
        return cls(pca_mean=mean, pca_components=components, features=features)


def _embed(embed: EmbedFn, x: np.ndarray) -> np.ndarray:
    """Call the caller's embedding function and check what comes back."""
    emb = np.asarray(embed(x), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
        raise InvalidInput(f"embed returned shape {emb.shape}, expected [{x.shape[0]}, D]")
    if not np.isfinite(emb).all():
        raise InvalidInput("embed returned NaN or infinite values")
    return emb


def _check_labels(y: np.ndarray, n: int) -> np.ndarray:
    """Labels must be integers, one per image."""
    labels = np.asarray(y)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInput(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _fit_pca(emb: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top components (capped by rank) by SVD, signs fixed so refits give the same basis."""
    mean = emb.mean(axis=0)
    _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
    tol = s.max(initial=0.0) * max(emb.shape) * np.finfo(np.float64).eps
    k = min(k_max, int((s > tol).sum()))
    components = vt[:k]
    # SVD signs are arbitrary; make each component's largest entry positive so the columns are stable.
    pivots = components[np.arange(k), np.abs(components).argmax(axis=1)]
    return mean, components * np.where(pivots < 0, -1.0, 1.0)[:, None]


def _table(emb: np.ndarray, mean: np.ndarray, components: np.ndarray, x: np.ndarray) -> pd.DataFrame:
    """Projected embeddings and image statistics as one DataFrame."""
    projected = (emb - mean) @ components.T
    table = pd.DataFrame(projected, columns=embedding_columns(components.shape[0]))
    stats = image_statistics(x)
    for i, name in enumerate(IMAGE_STAT_COLUMNS):
        table[name] = stats[:, i]
    return table


def fit_reference(embed: EmbedFn, x: np.ndarray, y: np.ndarray, cfg: FeatureConfig) -> Reference:
    """Fit the PCA basis on a share of the reference embeddings and tabulate the other images' features.

    Raises:
        InvalidInput: images, labels or embeddings of the wrong shape, or fewer than two images.
    """
    _as_images(x)
    n = x.shape[0]
    n_fit = round(n * cfg.pca_fit_share)
    if n - n_fit < 2 or (cfg.pca_fit_share > 0 and n_fit < 2):
        raise InvalidInput(f"{n} reference images leave too few to fit the PCA ({n_fit}) or to tabulate ({n - n_fit})")
    labels = _check_labels(y, n)
    emb = _embed(embed, x)
    order = np.random.default_rng(cfg.seed).permutation(n)
    fit_rows = np.sort(order[:n_fit]) if n_fit else np.arange(n)
    table_rows = np.sort(order[n_fit:])
    mean, components = _fit_pca(emb[fit_rows], cfg.pca_components)
    features = _table(emb[table_rows], mean, components, x[table_rows])
    features[LABEL_COLUMN] = labels[table_rows]
    return Reference(pca_mean=mean, pca_components=components, features=features)


def batch_features(embed: EmbedFn, ref: Reference, x: np.ndarray, y: np.ndarray | None) -> pd.DataFrame:
    """A batch's feature table in the reference's columns (label only when labels are given).

    Raises:
        InvalidInput: images, labels or embeddings of the wrong shape (incl. a D unlike the reference's).
    """
    _as_images(x)
    emb = _embed(embed, x)
    if emb.shape[1] != ref.pca_mean.shape[0]:
        raise InvalidInput(f"embedding width {emb.shape[1]} differs from the reference's {ref.pca_mean.shape[0]}")
    features = _table(emb, ref.pca_mean, ref.pca_components, x)
    if y is not None:
        features[LABEL_COLUMN] = _check_labels(y, x.shape[0])
    return features

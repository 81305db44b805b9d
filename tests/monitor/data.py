"""Synthetic image batches for the monitor tests: numpy only, no model."""

from __future__ import annotations

import numpy as np

SHAPE = (1, 8, 8)


def embed(x: np.ndarray) -> np.ndarray:
    """Identity embedding: the raw pixels, flattened (D = 64)."""
    return x.reshape(len(x), -1)


def images(rng: np.random.Generator, n: int, brightness: float = 0.0, noise_sd: float = 0.0) -> np.ndarray:
    """Images of a per-image base level in [0.2, 0.5] plus uniform pixel texture; stays in [0, 1] even +0.2."""
    base = rng.uniform(0.2, 0.5, size=(n, 1, 1, 1))
    x = base + 0.15 * rng.uniform(size=(n, *SHAPE)) + brightness
    if noise_sd:
        x = x + rng.normal(0.0, noise_sd, size=x.shape)
    return x.astype(np.float32)


def labels(rng: np.random.Generator, n: int, prevalence: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)) -> np.ndarray:
    """Labels drawn independently of the images, so a prevalence change leaves the images unchanged."""
    return rng.choice(len(prevalence), size=n, p=prevalence).astype(np.int64)

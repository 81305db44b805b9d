"""Images at their size: kept as uint8 wherever that loses nothing, made float32 only minibatch by minibatch.

A uint8 image takes a quarter of the bytes of its float32 copy. The registry hands batches over as float32 in
[0, 1] (registry.batches.parse_batch divides uint8 uploads by 255), so `stored` turns float32 images that lie
exactly on the 1/255 grid back into uint8, and `as_float` reproduces learner.models.to_tensor's float32 values
bit for bit (float32(u) / 255), on whatever device the tensor is on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from clreg.learner.errors import DataError


def compact(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] (or [N,H,W]) images as uint8 where that is exact, else float32: uint8 is kept as it came."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"expected images [N,C,H,W] or [N,H,W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"expected uint8 or float images, got {x.dtype}")
    x = np.asarray(x, dtype=np.float32)
    if x.size and np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0:
        quantised = np.rint(x * 255.0).astype(np.uint8)
        if np.array_equal(quantised.astype(np.float32) / np.float32(255.0), x):  # exactly what uint8 gives back
            return quantised
    # a copy: arrays from Ray's object store are read-only, and torch must not alias them
    return np.array(x, dtype=np.float32, order="C", copy=True)


def stored(x: np.ndarray) -> Tensor:
    """The images as a tensor at their size: uint8 where exact (see `compact`), else float32."""
    return torch.from_numpy(compact(x))


def as_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 in [0, 1] on the tensor's device (to_tensor's values exactly); float as float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x if x.dtype == torch.float32 else x.to(torch.float32)

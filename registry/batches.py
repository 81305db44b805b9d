"""Batches: parse and validate a pushed npz, split it deterministically, store it, enqueue it.

Validation happens before anything is written, so a refused batch leaves no trace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from clreg.registry.artifacts import ArtifactStore, sha256
from clreg.registry.errors import BatchMismatch, Conflict, NotFound, TooLarge
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.npz import NpzLimits, NpzReader
from clreg.registry.records import Batch, InputSpec
from clreg.registry.store import RedisRegistry


@dataclass(frozen=True)
class Limits:
    max_samples: int = 10_000
    heldout_fraction: float = 0.3
    max_inflated_bytes: int = 256 * 1024 * 1024  # x and y together, as their npy headers declare them


def parse_batch(data: bytes, spec: InputSpec, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """The batch's (x, y), checked against the model's input spec: shapes, dtypes and sample count from the
    npy headers before anything is inflated, then the values.

    Raises:
        MalformedBatch: not an npz with `x` and `y` (pickled object arrays are refused too).
        BatchMismatch: shape, dtype, non-finite values, or labels outside 0..classes-1.
        TooLarge: more samples or inflated bytes than the limits allow.
    """
    reader = NpzReader(data, NpzLimits(max_bytes=limits.max_inflated_bytes))
    reader.require("x", "y")
    n = _check_x_header(*reader.header("x"), spec, limits)
    _check_y_header(*reader.header("y"), n)
    x = reader.array("x")
    return _check_x(x[:, None] if x.ndim == 3 else x), _check_y(reader.array("y"), spec)


def _check_x_header(dtype: np.dtype, shape: tuple[int, ...], spec: InputSpec, limits: Limits) -> int:
    if dtype not in (np.uint8, np.float32):
        raise BatchMismatch(f"x has dtype {dtype}; send uint8 (0-255) or float32 (0-1)")
    want = (spec.channels, spec.height, spec.width)
    full = (shape[0], 1, *shape[1:]) if len(shape) == 3 and spec.channels == 1 else shape
    if len(full) != 4 or tuple(full[1:]) != want:
        raise BatchMismatch(f"x has shape {list(shape)}; this model takes [N, {want[0]}, {want[1]}, {want[2]}]"
                            + (" or [N, H, W]" if spec.channels == 1 else ""))
    if full[0] > limits.max_samples:
        raise TooLarge(f"x has {full[0]} samples; send at most {limits.max_samples} per batch")
    if full[0] < 1:
        raise BatchMismatch("x has no samples")
    return int(full[0])


def _check_y_header(dtype: np.dtype, shape: tuple[int, ...], n: int) -> None:
    if len(shape) != 1 or shape[0] != n:
        raise BatchMismatch(f"y has shape {list(shape)}; it must be [N] with N = {n} like x")
    if not np.issubdtype(dtype, np.integer):
        raise BatchMismatch(f"y has dtype {dtype}; labels must be integers")


def _check_x(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        if not np.isfinite(x).all():
            raise BatchMismatch(f"x has {int((~np.isfinite(x)).sum())} NaN or infinite values")
        if x.min() < 0.0 or x.max() > 1.0:
            raise BatchMismatch(f"float32 x must lie in [0, 1]; it spans [{x.min():.3g}, {x.max():.3g}]")
        return x
    return x.astype(np.float32) / 255.0


def _check_y(y: np.ndarray, spec: InputSpec) -> np.ndarray:
    bad = (y < 0) | (y >= spec.classes)
    if bad.any():
        raise BatchMismatch(f"{int(bad.sum())} labels lie outside 0..{spec.classes - 1} (e.g. {int(y[bad][0])})")
    return y.astype(np.int64)


def split(y: np.ndarray, batch_id: str, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Stratified train/held-out indices, seeded by the batch hash: the same bytes always split alike."""
    rng = np.random.default_rng(int(batch_id[:16], 16))
    train: list[int] = []
    heldout: list[int] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = int(round(len(idx) * heldout_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        heldout.extend(int(i) for i in idx[:k])
        train.extend(int(i) for i in idx[k:])
    return sorted(train), sorted(heldout)


def ingest(registry: RedisRegistry, artifacts: ArtifactStore, queue: IngestQueue, events: EventLog,
           model: str, site: str, data: bytes, limits: Limits, source: bytes | None = None,
           locked: bool = False) -> tuple[Batch, bool]:
    """Validate, store and enqueue a batch; returns (batch, is_new). Same bytes again: (stored batch, False).

    `source` is the upload `data` was converted from (a DICOM zip); it is stored beside the batch, as sent.
    A `locked` batch (a locked test set, registry/locked.py) has every sample in its held-out part and none to
    train on.

    Raises:
        Conflict: the same bytes were pushed before as a training batch and now as a locked set, or the reverse.
    """
    spec = registry.get_model(model).input
    x, y = parse_batch(data, spec, limits)
    batch_id = batch_key(model, site, data)
    existing = _existing(registry, batch_id)
    if existing is not None:
        return _duplicate(registry, existing, locked), False
    train, heldout = ([], list(range(int(y.size)))) if locked else split(y, batch_id, limits.heldout_fraction)
    batch = Batch(id=batch_id, model=model, site=site, samples=int(y.size),
                  class_counts=np.bincount(y, minlength=spec.classes).tolist(),
                  train_index=train, heldout_index=heldout, artifact=sha256(data), locked=locked,
                  source_artifact=artifacts.put(source) if source is not None else None)
    artifacts.put(data)
    # The record, its event and its ingest entry in one transaction: a batch is never stored unqueued.
    entries = [*events.entries(model, "batch.received", batch=batch_id, site=site, samples=batch.samples,
                               **({"locked": True} if locked else {})),
               queue.entry(model, batch_id)]
    stored = len(data) + (len(source) if source is not None else 0)
    if not registry.batches.add(batch, entries, stored_bytes=stored):  # a concurrent push of the same bytes won
        return _duplicate(registry, registry.batches.get(batch_id), locked), False
    return batch, True


def _duplicate(registry: RedisRegistry, existing: Batch, locked: bool) -> Batch:
    """A stored batch pushed again: answered like the first push, only once it is acknowledged. The same samples
    cannot be both a locked test set and training data."""
    if existing.locked != locked:
        was = "a locked test set" if existing.locked else "a training batch"
        raise Conflict(f"batch {existing.id[:12]} was pushed before as {was}; the same samples cannot be "
                       f"{'learnt' if existing.locked else 'locked'} now")
    registry.batches.settle(existing)
    return existing


def batch_key(model: str, site: str, data: bytes) -> str:
    """A batch's id: the same bytes from the same site for the same model are one batch (a duplicate push);
    the same bytes for another model or from another site are a batch of their own."""
    return hashlib.sha256(f"{model}\0{site}\0".encode() + data).hexdigest()


def _existing(registry: RedisRegistry, batch_id: str) -> Batch | None:
    try:
        return registry.batches.get(batch_id)
    except NotFound:
        return None


def load_arrays(artifacts: ArtifactStore, batch: Batch, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """A stored batch's (x float32 [N,C,H,W], y int64), read back through the verifying artifact store."""
    return parse_batch(artifacts.get(batch.artifact), spec, Limits(max_samples=max(batch.samples, 1)))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

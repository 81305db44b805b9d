"""Batches: parse and validate a pushed npz, split it deterministically, store it, enqueue it.

Validation happens before anything is written, so a refused batch leaves no trace.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

from registry.artifacts import ArtifactStore, sha256
from registry.errors import BatchMismatch, MalformedBatch, NotFound
from registry.events import EventLog, IngestQueue
from registry.records import Batch, InputSpec
from registry.store import RedisRegistry


@dataclass(frozen=True)
class Limits:
    max_samples: int = 10_000
    heldout_fraction: float = 0.3


def parse_batch(data: bytes, spec: InputSpec, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """The batch's (x, y), checked against the model's input spec.

    Raises:
        MalformedBatch: not an npz with `x` and `y` (pickled object arrays are refused too).
        BatchMismatch: shape, dtype, non-finite values, or labels outside 0..classes-1.
    """
    x, y = _load_npz(data)
    return _check_x(x, spec, limits), _check_y(y, x.shape[0], spec)


def _load_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise MalformedBatch(f"the npz must hold arrays 'x' and 'y'; it holds {sorted(npz.files)}")
            return npz["x"], npz["y"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise MalformedBatch(f"the body is not a readable .npz without pickled objects: {e}") from e


def _check_x(x: np.ndarray, spec: InputSpec, limits: Limits) -> np.ndarray:
    if x.dtype not in (np.uint8, np.float32):
        raise BatchMismatch(f"x has dtype {x.dtype}; send uint8 (0-255) or float32 (0-1)")
    if x.ndim == 3 and spec.channels == 1:
        x = x[:, None]
    want = (spec.channels, spec.height, spec.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise BatchMismatch(f"x has shape {list(x.shape)}; this model takes [N, {want[0]}, {want[1]}, {want[2]}]"
                            + (" or [N, H, W]" if spec.channels == 1 else ""))
    if not 1 <= x.shape[0] <= limits.max_samples:
        raise BatchMismatch(f"x has {x.shape[0]} samples; send 1 to {limits.max_samples}")
    if x.dtype == np.float32:
        if not np.isfinite(x).all():
            raise BatchMismatch(f"x has {int((~np.isfinite(x)).sum())} NaN or infinite values")
        if x.min() < 0.0 or x.max() > 1.0:
            raise BatchMismatch(f"float32 x must lie in [0, 1]; it spans [{x.min():.3g}, {x.max():.3g}]")
        return x
    return (x.astype(np.float32) / 255.0)


def _check_y(y: np.ndarray, n: int, spec: InputSpec) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise BatchMismatch(f"y has shape {list(y.shape)}; it must be [N] with N = {n} like x")
    if not np.issubdtype(y.dtype, np.integer):
        raise BatchMismatch(f"y has dtype {y.dtype}; labels must be integers")
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
           model: str, site: str, data: bytes, limits: Limits, source: bytes | None = None) -> tuple[Batch, bool]:
    """Validate, store and enqueue a batch; returns (batch, is_new). Same bytes again: (stored batch, False).

    `source` is the upload `data` was converted from (a DICOM zip); it is stored beside the batch, as sent.
    """
    spec = registry.get_model(model).input
    x, y = parse_batch(data, spec, limits)
    batch_id = batch_key(model, site, data)
    existing = _existing(registry, batch_id)
    if existing is not None:
        return existing, False
    train, heldout = split(y, batch_id, limits.heldout_fraction)
    batch = Batch(id=batch_id, model=model, site=site, samples=int(y.size),
                  class_counts=np.bincount(y, minlength=spec.classes).tolist(),
                  train_index=train, heldout_index=heldout, artifact=sha256(data),
                  source_artifact=artifacts.put(source) if source is not None else None)
    artifacts.put(data)
    # The record, its event and its ingest entry in one transaction: a batch is never stored unqueued.
    entries = [*events.entries(model, "batch.received", batch=batch_id, site=site, samples=batch.samples),
               queue.entry(model, batch_id)]
    if not registry.add_batch(batch, entries):  # a concurrent push of the same bytes won the race
        return registry.get_batch(batch_id), False
    return batch, True


def batch_key(model: str, site: str, data: bytes) -> str:
    """A batch's id: the same bytes from the same site for the same model are one batch (a duplicate push);
    the same bytes for another model or from another site are a batch of their own."""
    return hashlib.sha256(f"{model}\0{site}\0".encode() + data).hexdigest()


def _existing(registry: RedisRegistry, batch_id: str) -> Batch | None:
    try:
        return registry.get_batch(batch_id)
    except NotFound:
        return None


def load_arrays(artifacts: ArtifactStore, batch: Batch, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """A stored batch's (x float32 [N,C,H,W], y int64), read back through the verifying artifact store."""
    return parse_batch(artifacts.get(batch.artifact), spec, Limits(max_samples=max(batch.samples, 1)))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

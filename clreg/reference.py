"""A version's drift reference: features of (a sample of) the data it learnt, the embedding they come from.

Built when a version is assembled (clreg.learning) and read by every drift check against it (clreg.monitoring).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from clreg.context import Stores
from clreg.learner.models import embed
from clreg.monitor.features import EmbedFn, FeatureConfig, Reference, fit_reference
from clreg.registry.artifacts import Artifact, ArtifactStore, VersionArtifacts
from clreg.registry.records import Model, ModelVersion


def reference_sample(stores: Stores, samples: int, seed: int, model: Model, batch_ids: list[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of `samples` of the training images of these batches, and their labels."""
    per_site = stores.split_by_site(model, batch_ids, "train")
    x = np.concatenate([xy[0] for xy in per_site.values()])
    y = np.concatenate([xy[1] for xy in per_site.values()])
    keep = np.random.default_rng(seed).permutation(len(y))[:samples]
    return x[keep], y[keep]


def reference_bytes(embed: EmbedFn, x: np.ndarray, y: np.ndarray, cfg: FeatureConfig) -> bytes:
    """The reference of images (embedded by `embed`) and labels, as npz."""
    ref = fit_reference(embed, x, y, cfg)
    buf = io.BytesIO()
    arrays: dict[str, Any] = ref.to_arrays()  # numpy's stub would match a value against allow_pickle
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_reference(artifacts: ArtifactStore, version: ModelVersion) -> Reference:
    raw = VersionArtifacts(artifacts, version).get(Artifact.REFERENCE)
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return Reference.from_arrays({k: npz[k] for k in npz.files})


def embed_fn(net: torch.nn.Module) -> EmbedFn:
    """The monitor's embedding function: penultimate activations of `net` as numpy."""

    def run(x: np.ndarray) -> np.ndarray:
        return embed(net, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run

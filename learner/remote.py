"""The one thin Ray wrapper: run train_site as a Ray task, on a GPU when the cluster has one.

The caller owns ray.init; this module only submits, waits and translates Ray's errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import ray.exceptions
import torch

from learner.errors import TrainingFailed
from learner.ewc import EWCState, state_from_bytes
from learner.models import build_model, load_weights
from learner.train import TrainConfig, TrainResult, train_site


def resource_request(cluster_resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Task options: one GPU when the cluster reports one, else one CPU; one retry if a worker dies."""
    resources = ray.cluster_resources() if cluster_resources is None else cluster_resources
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    return {"num_cpus": 1, "num_gpus": gpus, "max_retries": 1}


def _train_task(
    factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes | None,
    ewc_state: bytes | None, x: np.ndarray, y: np.ndarray, site: str, cfg: TrainConfig,
) -> TrainResult:
    """Inside the worker: rebuild the model, load the parent's weights and EWC state, train one site."""
    channels, height, width, classes = spec
    torch.manual_seed(cfg.seed)  # a fresh model's initial weights are reproducible too
    model = build_model(factory, factory_kwargs, channels, height, width, classes)
    if weights is not None:
        load_weights(model, weights)
    ewc = state_from_bytes(ewc_state) if ewc_state is not None else EWCState(mode=cfg.ewc_mode, gamma=cfg.ewc_gamma)
    return train_site(model, x, y, site, ewc, cfg)


_remote_train = ray.remote(max_retries=1)(_train_task)


def train_on_ray(
    factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes | None,
    ewc_state: bytes | None, x: np.ndarray, y: np.ndarray, site: str, cfg: TrainConfig, timeout_s: float = 600,
) -> TrainResult:
    """Train one site in a Ray task and wait for its result.

    Raises:
        TrainingFailed: the task raised, its worker died twice, or it ran past timeout_s (then it is cancelled).
    """
    try:
        ref = _remote_train.options(**resource_request()).remote(
            factory, factory_kwargs, spec, weights, ewc_state, x, y, site, cfg
        )
    except ray.exceptions.RayError as e:
        raise TrainingFailed(f"could not submit the training task for site {site!r}: {e}") from e
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        ray.cancel(ref, force=True)
        raise TrainingFailed(f"training on site {site!r} ran past {timeout_s:g} s and was cancelled") from e
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if e.cause is not None else e
        raise TrainingFailed(f"training on site {site!r} failed: {type(cause).__name__}: {cause}") from e
    except ray.exceptions.RayError as e:
        raise TrainingFailed(f"training on site {site!r} failed in Ray: {e}") from e

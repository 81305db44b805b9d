"""The one thin Ray wrapper: run train_site as a Ray task, on a GPU when the cluster has one.

The caller owns ray.init; this module only submits, waits, relays progress and translates Ray's errors.
Progress: the task pushes each epoch's row to a small `ProgressRelay` actor; the caller polls it while it
waits for the result, so (epoch, loss) is visible while the task runs. A worker that dies is retried once
(max_retries=1); a second death is reported as TrainingFailed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import ray.exceptions
import torch

from learner.errors import TrainingFailed, TrainingInterrupted
from learner.ewc import EWCState, state_from_bytes
from learner.models import build_model, load_weights
from learner.train import TrainConfig, TrainResult, train_site

Progress = Callable[[dict], None]


def resource_request(cluster_resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Task options: one GPU when the cluster reports one, else one CPU; one retry if a worker dies."""
    resources = ray.cluster_resources() if cluster_resources is None else cluster_resources
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    return {"num_cpus": 1, "num_gpus": gpus, "max_retries": 1}


class _Relay:
    """Rows pushed by the task, drained by the caller; calls from one submitter run in order."""

    def __init__(self) -> None:
        self._rows: list[dict] = []

    def push(self, row: dict) -> None:
        self._rows.append(row)

    def drain(self) -> list[dict]:
        rows, self._rows = self._rows, []
        return rows

    def flush(self) -> None:
        """A no-op the task waits on: by its return every earlier push from the task has run."""


ProgressRelay = ray.remote(num_cpus=0)(_Relay)


def _train_task(
    factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes | None,
    ewc_state: bytes | None, x: np.ndarray, y: np.ndarray, site: str, cfg: TrainConfig,
    bn_bank: bytes | None = None, relay: Any = None,
) -> TrainResult:
    """Inside the worker: rebuild the model, load the parent's weights and EWC state, train one site."""
    channels, height, width, classes = spec
    torch.manual_seed(cfg.seed)  # a fresh model's initial weights are reproducible too
    model = build_model(factory, factory_kwargs, channels, height, width, classes)
    if weights is not None:
        load_weights(model, weights)
    ewc = state_from_bytes(ewc_state) if ewc_state is not None else EWCState(mode=cfg.ewc_mode, gamma=cfg.ewc_gamma)
    push = (lambda row: relay.push.remote(row)) if relay is not None else None
    result = train_site(model, x, y, site, ewc, cfg, progress=push, bn_bank=bn_bank)
    if relay is not None:
        ray.get(relay.flush.remote())
    return result


_remote_train = ray.remote(max_retries=1)(_train_task)


def _forward(relay: Any, progress: Progress | None) -> None:
    """Hand every row the relay holds to the caller's callback."""
    if relay is not None and progress is not None:
        for row in ray.get(relay.drain.remote()):
            progress(row)


def _wait(ref: Any, relay: Any, progress: Progress | None, site: str, timeout_s: float, poll_s: float,
          stop: threading.Event | None) -> TrainResult:
    """Poll the task until it finishes, relaying progress; cancel it past timeout_s or once `stop` is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _ = ray.wait([ref], timeout=max(0.0, min(poll_s, deadline - time.monotonic())))
        _forward(relay, progress)
        if ready:
            return ray.get(ref)
        if stop is not None and stop.is_set():
            ray.cancel(ref, force=True)
            raise TrainingInterrupted(f"training on site {site!r} was cancelled: the caller is stopping")
        if time.monotonic() >= deadline:
            ray.cancel(ref, force=True)
            raise TrainingFailed(f"training on site {site!r} ran past {timeout_s:g} s and was cancelled")


def train_on_ray(
    factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes | None,
    ewc_state: bytes | None, x: np.ndarray, y: np.ndarray, site: str, cfg: TrainConfig, timeout_s: float = 600,
    bn_bank: bytes | None = None, progress: Progress | None = None, poll_s: float = 0.5,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train one site in a Ray task and wait for its result, calling progress(row) per epoch as it arrives.

    Raises:
        TrainingFailed: the task raised, its worker died twice, or it ran past timeout_s (then it is cancelled).
        TrainingInterrupted: `stop` was set while the task ran (it is cancelled).
    """
    relay = None
    try:
        relay = ProgressRelay.remote() if progress is not None else None
        ref = _remote_train.options(**resource_request()).remote(
            factory, factory_kwargs, spec, weights, ewc_state, x, y, site, cfg, bn_bank, relay
        )
        return _wait(ref, relay, progress, site, timeout_s, poll_s, stop)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if e.cause is not None else e
        raise TrainingFailed(f"training on site {site!r} failed: {type(cause).__name__}: {cause}") from e
    except ray.exceptions.RayError as e:
        raise TrainingFailed(f"training on site {site!r} failed in Ray: {type(e).__name__}: {e}") from e
    finally:
        if relay is not None:
            ray.kill(relay)

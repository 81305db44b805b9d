"""The one thin Ray wrapper: run update candidates as Ray tasks, in parallel, on GPUs when the cluster has them,
and answer a chosen candidate's held-out sets there too.

The caller owns ray.init; this module only submits, waits, relays progress and translates Ray's errors.
Each candidate is one task (`learner.update.train_update` with its own settings); the cluster runs as many
at once as it has CPUs (or GPUs). Progress: tasks push each epoch's row, tagged with the candidate, to a
small `ProgressRelay` actor that the caller polls while it waits. A task whose worker dies is retried once
(max_retries=1); a second death fails that candidate, and the update fails only when every candidate did.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import ray
import ray.exceptions
import torch

from clreg.learner.answer import Answerer
from clreg.learner.errors import TrainingFailed, TrainingInterrupted
from clreg.learner.evaluate import predict_logits
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import MeanStd, build_model, embed, load_weights, to_tensor
from clreg.learner.sitebn import bank_from_bytes
from clreg.learner.train import TrainConfig
from clreg.learner.update import UpdateData, UpdateResult, train_update

Progress = Callable[[int, str, dict[str, float]], None]  # (candidate index, site, curve row)


PIN = 0.01  # of a custom resource per task: it pins tasks to the nodes that offer it, their CPUs bound how many


def resource_request(cluster_resources: dict[str, float] | None = None, resource: str | None = None) -> dict[str, Any]:
    """Task options: one GPU when the cluster reports one; else one CPU, on a node offering `resource` when
    one is named (operators pin training to chosen nodes); one retry if a worker dies.

    Raises:
        TrainingFailed: `resource` is named but no node of the cluster offers it (the tasks would wait forever).
    """
    resources = ray.cluster_resources() if cluster_resources is None else cluster_resources  # type: ignore[no-untyped-call]
    if resources.get("GPU", 0) >= 1:
        return {"num_cpus": 1, "num_gpus": 1, "max_retries": 1}
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "max_retries": 1}
    if resource:
        if resources.get(resource, 0) < PIN:
            raise TrainingFailed(f"no node of the Ray cluster offers the resource {resource!r} that training "
                                 "is pinned to (CLREG_SEARCH__RESOURCE)")
        options["resources"] = {resource: PIN}
    return options


class _Relay:
    """Rows pushed by the tasks, drained by the caller; calls from one submitter run in order."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, str, dict[str, float]]] = []

    def push(self, candidate: int, site: str, row: dict[str, float]) -> None:
        self._rows.append((candidate, site, row))

    def drain(self) -> list[tuple[int, str, dict[str, float]]]:
        rows, self._rows = self._rows, []
        return rows

    def flush(self) -> None:
        """A no-op the task waits on: by its return every earlier push from the task has run."""


ProgressRelay = ray.remote(num_cpus=0)(_Relay)


def _update_task(factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int],
                 weights: bytes | None, ewc_state: bytes | None, bn_bank: bytes | None, data: UpdateData,
                 cfg: TrainConfig, relay: Any = None, candidate: int = 0,
                 normalisation: MeanStd | None = None) -> UpdateResult:
    """Inside the worker: rebuild the model (normalising its input as registered), load the parent's weights
    and EWC state, run one candidate."""
    channels, height, width, classes = spec
    torch.manual_seed(cfg.seed)  # a fresh model's initial weights are reproducible too
    model = build_model(factory, factory_kwargs, channels, height, width, classes, normalisation)
    if weights is not None:
        load_weights(model, weights)
    ewc = state_from_bytes(ewc_state) if ewc_state is not None else EWCState(mode=cfg.ewc_mode, gamma=cfg.ewc_gamma)
    push = (lambda site, row: relay.push.remote(candidate, site, row)) if relay is not None else None
    result = train_update(model, data, ewc, cfg, bn_bank, progress=push)
    if relay is not None:
        ray.get(relay.flush.remote())
    where = dataclasses.replace(result.result, node=ray.get_runtime_context().get_node_id())
    return dataclasses.replace(result, result=where)


_remote_update = ray.remote(max_retries=1)(_update_task)


def _forward(relay: Any, progress: Progress | None) -> None:
    if relay is not None and progress is not None:
        for candidate, site, row in ray.get(relay.drain.remote()):
            progress(candidate, site, row)


def _wait_all(refs: list[Any], relay: Any, progress: Progress | None, timeout_s: float, poll_s: float,
              stop: threading.Event | None) -> None:
    """Poll until every task has finished, relaying progress; cancel them all past timeout_s or on `stop`."""
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        wait_s = max(0.0, min(poll_s, deadline - time.monotonic()))
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        _forward(relay, progress)
        if pending and stop is not None and stop.is_set():
            for ref in pending:
                ray.cancel(ref, force=True)
            raise TrainingInterrupted("training was cancelled: the caller is stopping")
        if pending and time.monotonic() >= deadline:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise TrainingFailed(f"training ran past {timeout_s:g} s and was cancelled")
    _forward(relay, progress)


def _outcome(ref: Any) -> UpdateResult | TrainingFailed:
    """A finished candidate's result, or why it failed (Ray's errors translated here, once)."""
    try:
        return cast("UpdateResult | TrainingFailed", ray.get(ref))
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if e.cause is not None else e
        return TrainingFailed(f"training failed: {type(cause).__name__}: {cause}")
    except ray.exceptions.RayError as e:
        return TrainingFailed(f"training failed in Ray: {type(e).__name__}: {e}")


def search_on_ray(factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int],
                  weights: bytes | None, ewc_state: bytes | None, bn_bank: bytes | None, data: UpdateData,
                  candidates: list[TrainConfig], progress: Progress | None = None, timeout_s: float = 1800,
                  poll_s: float = 0.5, stop: threading.Event | None = None, resource: str | None = None,
                  normalisation: MeanStd | None = None) -> list[UpdateResult | TrainingFailed]:
    """Train every candidate setting as its own Ray task, all submitted at once; one outcome per candidate.
    `normalisation` ((mean, std) per channel) is the model's input normalisation, applied inside each task.

    Raises:
        TrainingFailed: the tasks ran past timeout_s (then they are cancelled), or the relay failed.
        TrainingInterrupted: `stop` was set while they ran (they are cancelled).
    """
    relay: Any = None
    try:
        relay = ProgressRelay.remote() if progress is not None else None
        shared = ray.put(data)  # the arrays go to the object store once, not once per candidate
        options = resource_request(resource=resource)
        refs = [_remote_update.options(**options).remote(factory, factory_kwargs, spec, weights, ewc_state, bn_bank,
                                                         shared, cfg, relay, i, normalisation)
                for i, cfg in enumerate(candidates)]
        _wait_all(refs, relay, progress, timeout_s, poll_s, stop)
        return [_outcome(ref) for ref in refs]
    except ray.exceptions.RayError as e:
        raise TrainingFailed(f"training failed in Ray: {type(e).__name__}: {e}") from e
    finally:
        if relay is not None:
            ray.kill(relay)


EMBED_CHUNK = 64  # reference images per forward pass in the answering task (a 224-px DenseNet's stay small)


def _answer_task(factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes,
                 bn_bank: bytes | None, normalisation: MeanStd | None, heldout: dict[str, np.ndarray],
                 reference: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inside the worker, on its GPU when it has one: each site's held-out logits as /v1/predict answers a request
    naming the site, and the embeddings of the reference images."""
    channels, height, width, classes = spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(factory, factory_kwargs, channels, height, width, classes, normalisation)
    load_weights(model, weights)
    answerer = Answerer.of(model.to(device), bank_from_bytes(bn_bank) if bn_bank is not None else None)
    logits = {}
    with torch.no_grad():
        for site, x in heldout.items():
            net, _, _ = answerer.pick(site, to_tensor(x).to(device))
            logits[site] = predict_logits(net, x)
        chunks = [embed(answerer.module, to_tensor(reference[i:i + EMBED_CHUNK]).to(device)).cpu()
                  for i in range(0, len(reference), EMBED_CHUNK)] if reference is not None else []
    return logits, torch.cat(chunks).numpy() if chunks else None


_remote_answer = ray.remote(max_retries=1)(_answer_task)


def answer_on_ray(factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int], weights: bytes,
                  bn_bank: bytes | None, heldout: dict[str, np.ndarray], reference: np.ndarray | None,
                  normalisation: MeanStd | None = None, timeout_s: float = 1800,
                  resource: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A version's held-out logits per site and the embeddings of its drift reference's images, computed in one
    Ray task where training runs (a GPU when the cluster has one), not in the caller's process.

    Raises:
        TrainingFailed: the task raised, its worker died twice, or it ran past timeout_s.
    """
    try:
        ref = _remote_answer.options(**resource_request(resource=resource)).remote(
            factory, factory_kwargs, spec, weights, bn_bank, normalisation, heldout, reference)
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        ray.cancel(ref, force=True)
        raise TrainingFailed(f"answering the held-out sets ran past {timeout_s:g} s and was cancelled") from e
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if e.cause is not None else e
        raise TrainingFailed(f"answering the held-out sets failed: {type(cause).__name__}: {cause}") from e
    except ray.exceptions.RayError as e:
        raise TrainingFailed(f"answering the held-out sets failed in Ray: {type(e).__name__}: {e}") from e


def cluster_has_gpu() -> bool:
    """Whether the Ray cluster offers a GPU (where training and answering tasks then run)."""
    return bool(ray.cluster_resources().get("GPU", 0) >= 1)  # type: ignore[no-untyped-call]

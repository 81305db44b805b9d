"""Elastic weight consolidation: the Fisher diagonal, the penalty and consolidation, in pure torch.

Separate mode keeps one (Fisher, anchor) pair per site k and penalises
    P(theta) = sum_k sum_i F_k,i (theta_i - theta*_k,i)^2;
online mode keeps one running pair under the key "online": F <- gamma * F_old + F_new, anchored at the
last consolidated weights. The trainer adds (lambda / 2) * P to the cross-entropy. The Fisher is the
per-sample empirical Fisher E_n[(d log p(y_n | x_n) / d theta)^2] over trainable parameters, taken in eval
mode (BatchNorm uses its running statistics, so samples do not interact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from learner import tensorfile
from learner.errors import WeightsError

Mode = Literal["separate", "online"]
ONLINE_KEY = "online"
FORMAT = "clreg-ewc/1"


class EWCEntry(NamedTuple):
    """One consolidated task: parameter importances and the weights they anchor to."""

    fisher: dict[str, Tensor]
    anchor: dict[str, Tensor]


@dataclass
class EWCState:
    """Everything EWC remembers about earlier sites; `sites` lists them in consolidation order."""

    mode: Mode = "separate"
    gamma: float = 1.0
    entries: dict[str, EWCEntry] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Reject unknown modes early: a typo would otherwise silently change the maths."""
        if self.mode not in ("separate", "online"):
            raise ValueError(f"unknown EWC mode {self.mode!r}: use 'separate' or 'online'")


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached trainable parameters by name: the coordinates the Fisher is taken over."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def _log_lik_fn(model: nn.Module, buffers: dict[str, Tensor]) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """log p(y | x) of one sample as a function of the parameters, for grad/vmap."""

    def log_lik(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        # gather, not [0, y]: indexing by a batched tensor is data-dependent control flow under vmap
        return F.log_softmax(logits, dim=-1)[0].gather(0, y.unsqueeze(0)).squeeze(0)

    return log_lik


def _subsample(x: Tensor, y: Tensor, max_samples: int | None) -> tuple[Tensor, Tensor]:
    """At most max_samples, evenly spaced so a class-sorted batch still gives every class."""
    if max_samples is None or len(x) <= max_samples:
        return x, y
    idx = torch.arange(max_samples) * len(x) // max_samples
    return x[idx], y[idx]


def fisher_diagonal(
    model: nn.Module, x: Tensor, y: Tensor, chunk_size: int = 64, max_samples: int | None = None
) -> dict[str, Tensor]:
    """Per-sample empirical Fisher diagonal, vectorised with torch.func.vmap(grad) in chunks."""
    x, y = _subsample(x, y, max_samples)
    device = next(model.parameters()).device
    params = trainable_params(model)
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    per_sample_grads = vmap(grad(_log_lik_fn(model, buffers)), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), chunk_size):
            xb, yb = x[start : start + chunk_size].to(device), y[start : start + chunk_size].to(device)
            grads = per_sample_grads(params, xb, yb)
            for k, g in grads.items():
                total[k] += g.pow(2).sum(dim=0)
    finally:
        model.train(was_training)
    return {k: (t / max(len(x), 1)).cpu() for k, t in total.items()}


def fisher_per_sample_loop(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The same Fisher, one backward pass per sample: the slow reference for tests and benchmarks."""
    device = next(model.parameters()).device
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    was_training = model.training
    model.eval()
    try:
        for i in range(len(x)):
            log_p = F.log_softmax(model(x[i : i + 1].to(device)), dim=-1)[0, y[i]]
            grads = torch.autograd.grad(log_p, [p for _, p in named])
            for (k, _), g in zip(named, grads, strict=True):
                total[k] += g.pow(2)
    finally:
        model.train(was_training)
    return {k: (t / max(len(x), 1)).cpu() for k, t in total.items()}


def fisher_minibatch_squared(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 32) -> dict[str, Tensor]:
    """Avalanche's estimator: the mean over minibatches of the squared mean-loss gradient (biased low)."""
    device = next(model.parameters()).device
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    batches = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, [p for _, p in named])
            for (k, _), g in zip(named, grads, strict=True):
                total[k] += g.pow(2)
            batches += 1
    finally:
        model.train(was_training)
    return {k: (t / max(batches, 1)).cpu() for k, t in total.items()}


def ewc_penalty(model: nn.Module, state: EWCState) -> Tensor:
    """sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (no lambda/2); exactly 0 at the anchor."""
    named = dict(model.named_parameters())
    device = next(iter(named.values())).device if named else torch.device("cpu")
    penalty = torch.zeros((), device=device)
    for entry in state.entries.values():
        for k, fisher in entry.fisher.items():
            p = named[k]
            diff = p - entry.anchor[k].to(p.device)
            penalty = penalty + (fisher.to(p.device) * diff.pow(2)).sum()
    return penalty


def state_to_device(state: EWCState, device: torch.device) -> EWCState:
    """The same state with every tensor on device, so the penalty does no copies per step."""
    entries = {
        key: EWCEntry({k: v.to(device) for k, v in e.fisher.items()}, {k: v.to(device) for k, v in e.anchor.items()})
        for key, e in state.entries.items()
    }
    return EWCState(mode=state.mode, gamma=state.gamma, entries=entries, sites=list(state.sites))


def consolidate(state: EWCState, site: str, fisher: dict[str, Tensor], anchor: dict[str, Tensor]) -> EWCState:
    """A new state with the site folded in: replace its entry (separate) or F = gamma F_old + F_new (online)."""
    new = EWCEntry(
        {k: v.detach().cpu().clone() for k, v in fisher.items()},
        {k: v.detach().cpu().clone() for k, v in anchor.items()},
    )
    entries = dict(state.entries)
    if state.mode == "separate":
        entries[site] = new
    else:
        old = entries.get(ONLINE_KEY)
        if old is not None:
            new = EWCEntry({k: state.gamma * old.fisher[k] + f for k, f in new.fisher.items()}, new.anchor)
        entries[ONLINE_KEY] = new
    sites = [s for s in state.sites if s != site] + [site]
    return EWCState(mode=state.mode, gamma=state.gamma, entries=entries, sites=sites)


def state_to_bytes(state: EWCState) -> bytes:
    """Deterministic safetensors bytes; mode, gamma, entry keys and sites live in the metadata (no pickle)."""
    tensors: dict[str, Tensor] = {}
    keys = list(state.entries)
    for i, key in enumerate(keys):  # index-based names: entry keys never need escaping
        entry = state.entries[key]
        tensors.update({f"{i}.fisher.{k}": v for k, v in entry.fisher.items()})
        tensors.update({f"{i}.anchor.{k}": v for k, v in entry.anchor.items()})
    info = {"mode": state.mode, "gamma": float(state.gamma), "entries": keys, "sites": state.sites}
    return tensorfile.dump(tensors, FORMAT, info)


def _read(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return tensorfile.load(data, FORMAT, "EWC state")


def state_from_bytes(data: bytes) -> EWCState:
    """Inverse of state_to_bytes.

    Raises:
        WeightsError: the bytes are not an EWC state written by state_to_bytes.
    """
    tensors, meta = _read(data)
    try:
        keys: list[str] = list(meta["entries"])
        state = EWCState(mode=meta["mode"], gamma=float(meta["gamma"]), sites=list(meta["sites"]))
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"EWC state metadata is incomplete: {e}") from e
    for i, key in enumerate(keys):
        fisher = {n.split(".", 2)[2]: t for n, t in tensors.items() if n.startswith(f"{i}.fisher.")}
        anchor = {n.split(".", 2)[2]: t for n, t in tensors.items() if n.startswith(f"{i}.anchor.")}
        state.entries[key] = EWCEntry(fisher, anchor)
    return state

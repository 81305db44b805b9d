"""Elastic weight consolidation: the Fisher diagonal, the penalty and consolidation, in pure torch.

Separate mode keeps one (Fisher, anchor) pair per site k and penalises
    P(theta) = sum_k sum_i F_k,i (theta_i - theta*_k,i)^2;
online mode keeps one running pair under the key "online": F <- gamma * F_old + F_new, anchored at the
last consolidated weights. The trainer adds (lambda / 2) * P to the cross-entropy. The Fisher is the
per-sample empirical Fisher E_n[(d log p(y_n | x_n) / d theta)^2] over trainable parameters, taken in eval
mode (BatchNorm uses its running statistics, so samples do not interact); learner.fisher computes it and is
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from clreg.learner import tensorfile
from clreg.learner.errors import WeightsError
from clreg.learner.fisher import (  # noqa: F401  (re-exported: callers import the estimators from clreg.learner.ewc)
    fisher_diagonal,
    fisher_diagonal_vmap,
    fisher_minibatch_squared,
    fisher_per_sample_loop,
    trainable_params,
)

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

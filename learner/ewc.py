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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
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


class Quadratic(NamedTuple):
    """The whole penalty as one quadratic, sum_i F_i (theta_i - m_i)^2 + c: what a training step evaluates.

    sum_k F_k (theta - a_k)^2 = F (theta - m)^2 + c exactly, with F = sum_k F_k, m = sum_k F_k a_k / F and
    c = sum_k F_k a_k^2 - F m^2, so a step costs the same with one earlier site as with fifty.
    """

    fisher: dict[str, Tensor]
    centre: dict[str, Tensor]
    constant: float


def quadratic(state: EWCState, device: torch.device | None = None) -> Quadratic:
    """Every entry of the state folded into one Quadratic (sums in float64, tensors float32 on `device`)."""
    fisher: dict[str, Tensor] = {}
    moment: dict[str, Tensor] = {}
    constant = 0.0
    for entry in state.entries.values():
        for k, f in entry.fisher.items():
            f64, a64 = f.double(), entry.anchor[k].double()
            fisher[k] = fisher[k] + f64 if k in fisher else f64
            moment[k] = moment[k] + f64 * a64 if k in moment else f64 * a64
            constant += float((f64 * a64 * a64).sum())
    # the centre as it will be used (float32), so that one entry's penalty is exactly 0 at its anchor
    centre = {k: torch.where(fisher[k] > 0, moment[k] / fisher[k].clamp(min=1e-300), 0.0).float() for k in fisher}
    constant -= sum(float((fisher[k] * centre[k].double().pow(2)).sum()) for k in fisher)
    device = device or torch.device("cpu")
    return Quadratic({k: v.float().to(device) for k, v in fisher.items()},
                     {k: v.to(device) for k, v in centre.items()}, max(constant, 0.0))


def quadratic_penalty(model: nn.Module, q: Quadratic) -> Tensor:
    """sum_i F_i (theta_i - m_i)^2 + c over the model's parameters (no lambda/2)."""
    named = dict(model.named_parameters())
    device = next(iter(named.values())).device if named else torch.device("cpu")
    penalty = torch.full((), q.constant, device=device)
    for k, f in q.fisher.items():
        penalty = penalty + (f * (named[k] - q.centre[k]).pow(2)).sum()
    return penalty


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


# A state stored in parts (one artifact per entry's Fisher and anchor; clreg.parts stores them): the parts a
# version shares with its parent are then stored once. An anchor part may also be a whole weights file (the
# weights the entry was consolidated at): readers take the Fisher's parameters from either.
INDEX_FORMAT = "clreg-ewc-index/1"
PART_FORMAT = "clreg-ewc-part/1"


def is_index(data: bytes) -> bool:
    """Whether EWC bytes are an index of parts rather than a whole state (state_to_bytes)."""
    return tensorfile.format_of(data) == INDEX_FORMAT


def index_to_bytes(state: EWCState) -> bytes:
    """The state's mode, gamma, sites and entry keys, without tensors."""
    info = {"mode": state.mode, "gamma": float(state.gamma), "entries": list(state.entries), "sites": state.sites}
    return tensorfile.dump({}, INDEX_FORMAT, info)


def index_from_bytes(data: bytes) -> tuple[EWCState, list[str]]:
    """(the state without entries, the entry keys in order)."""
    _, info = tensorfile.load(data, INDEX_FORMAT, "EWC index")
    try:
        state = EWCState(mode=info["mode"], gamma=float(info["gamma"]), sites=list(info["sites"]))
        return state, list(info["entries"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"EWC index is incomplete: {e}") from e


def part_to_bytes(tensors: dict[str, Tensor]) -> bytes:
    """One entry's Fisher or anchor, deterministic bytes."""
    return tensorfile.dump(tensors, PART_FORMAT, {})


def part_from_bytes(data: bytes, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """An entry's Fisher or anchor; `names` picks the anchor's parameters from a whole weights file instead.

    Raises:
        WeightsError: not a part (nor, with names, safetensors holding every named parameter).
    """
    if names is None:
        return tensorfile.load(data, PART_FORMAT, "EWC part")[0]
    try:
        tensors = st_load(data)
        return {k: tensors[k] for k in names}
    except (SafetensorError, ValueError, KeyError) as e:
        raise WeightsError(f"EWC anchor is not safetensors holding the entry's parameters: {e}") from e


def anchored_in(entry: EWCEntry, weights: Mapping[str, Tensor]) -> bool:
    """Whether the entry's anchor is exactly these weights (every anchored parameter equal)."""
    return all(k in weights and torch.equal(weights[k], v) for k, v in entry.anchor.items())


def is_part(data: bytes) -> bool:
    return tensorfile.format_of(data) == PART_FORMAT

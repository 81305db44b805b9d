"""One EWC-regularised update on one site: setup, train, consolidate, read top to bottom.

The loss is CE_w(new site) + (lambda / 2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (see learner.ewc).
Defaults come from bench/ewc.py (bench/results/ewc.json: digits site stream, 5 sites in order
base, contrast, blur-noise, speckle, inverted, 250 training and ~109 held-out samples per site, small CNN,
5 epochs per site, lambda from the grid 1..1e5 (two points per decade) by mean ACC on 2 seeds, then 5 seeds):
  bn_policy "per_site" (each site keeps its own BatchNorm statistics and scale/shift, learner.sitebn;
  the shared conv/linear weights are EWC-protected), lr 2e-3, bn_lr_multiplier 30, exact per-sample
  Fisher: separate mode at lambda 300 ACC 0.912 ± 0.016, online 0.915 ± 0.018 (0.99 x joint training's
  0.925 ± 0.018); naive fine-tuning 0.238 ± 0.014 (BWT -0.838).
  The same EWC with one shared BatchNorm: "freeze" 0.667-0.695, "update" 0.550-0.561; the old defaults
  (freeze, lr 3e-4, lambda 3e5) kept earlier sites but never learnt the inverted site (0%).
  bn_lr_multiplier: a new site's scale/shift start from the closest site's and must move far (the inverted
  site needs the first layer's scale to change sign): at 1x the inverted site stays at 0-2%, at 30x it
  is learnt. Avalanche's minibatch-squared Fisher needs a ~30x larger lambda (1e4) and reaches 0.906-0.907
  with per-site BatchNorm (exact is +0.6 to +0.8 points, paired by seed); with a frozen shared BatchNorm
  the exact one is +8 to +10 points ahead on average, with a wide spread.
The product default is ewc_lambda 3e3 (the ungated grid's best is 300), because clreg runs every update
through the regression gate (earlier sites' lower bound > -0.05): on the demo stream (`clreg demo`,
seed 0) lambda 1e3 learnt most per site but lost 2 of 5 updates to the gate (earlier sites dropped 6-7
points), 1e4 passed all 5 but learnt the inverted site to only 8%, 3e3 passed all 5 and learnt it to 31%
while every earlier site stayed within 4 points. Without a gate, 300-1e3 is the better choice.
Transfer-learning policies (learner.optim), each a TrainConfig field and so a candidate-search dimension:
three learning rates (lr for the encoder, x head_lr_multiplier for the head, x bn_lr_multiplier for BatchNorm
scale/shift), warmup_steps on the head alone, freeze_blocks (the first N encoder blocks fixed for the whole
update, left out of the Fisher), and the BatchNorm policies "update", "freeze", "shared_frozen", "per_site".
Images stay at their size (learner.images): uint8 where exact, float32 one minibatch at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from clreg.learner import optim
from clreg.learner.errors import DataError, WeightsError
from clreg.learner.ewc import EWCEntry, EWCState, consolidate, quadratic, state_to_bytes
from clreg.learner.fisher import fisher_diagonal, fisher_minibatch_squared, trainable_params
from clreg.learner.images import as_float, stored
from clreg.learner.loop import Loop, class_weights, epoch_steps, warm_up
from clreg.learner.models import last_linear, weights_to_bytes
from clreg.learner.replay import Rehearsal
from clreg.learner.sitebn import (
    BN,
    Bank,
    apply_site_bn,
    bank_from_bytes,
    bank_to_bytes,
    bn_param_names,
    extract_site_bn,
    reestimate_statistics,
    route,
)


class TrainConfig(BaseModel):
    """Settings of one update; recorded in the version's lineage."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=32, ge=2)
    # The three learning rates: the encoder's, the head's (x head_lr_multiplier), BatchNorm scale/shift's.
    lr: float = Field(default=2e-3, gt=0)
    head_lr_multiplier: float = Field(default=1.0, gt=0)
    bn_lr_multiplier: float = Field(default=30.0, gt=0)  # BatchNorm scale/shift: per-site ones may move far
    warmup_steps: int = Field(default=0, ge=0)  # optimizer steps on the head alone before full fine-tuning
    freeze_blocks: int = Field(default=0, ge=0)  # the first N encoder blocks fixed for the whole update
    ewc_lambda: float = Field(default=3e3, ge=0)
    ewc_mode: Literal["separate", "online"] = "separate"
    ewc_gamma: float = Field(default=1.0, ge=0, le=1)
    # update: one shared BatchNorm, statistics follow the data; freeze: statistics fixed once estimated;
    # shared_frozen: statistics fixed as the weights carry them (a pretrained encoder's), scale/shift tuned;
    # per_site: each site its own BatchNorm (learner.sitebn).
    bn_policy: Literal["update", "freeze", "shared_frozen", "per_site"] = "per_site"
    class_weighted: bool = False
    # A site learnt again keeps its first Fisher, re-anchored at the new weights (False: EWC assumes the curvature
    # moves little near the anchor; saves a Fisher's time and a weights-sized artifact a version), or re-estimates it.
    refresh_fisher: bool = False
    fisher_samples: int | None = Field(default=512, ge=1)
    fisher_estimator: Literal["per_sample", "minibatch_squared"] = "per_sample"
    fisher_chunk: int | None = Field(default=None, ge=1)  # samples per Fisher chunk; None: sized to the budget
    # What one Fisher chunk's activations may take; None: 1 GiB on the CPU, a quarter of a GPU's free memory.
    fisher_memory_mb: int | None = Field(default=None, ge=16)
    mixed_precision: bool = True  # autocast in the training forward on CUDA (learner.optim); no effect on CPU
    val_fraction: float = Field(default=0.0, ge=0, lt=1)  # 0: no validation split, no early stopping
    replay_weight: float = Field(default=1.0, ge=0)  # weight of the replayed minibatch's loss (0: no rehearsal)
    # Remembered sites replayed per step (a minibatch each, taking turns in shuffled rounds); None: every one of
    # them, every step, so a step's cost grows with the number of sites (at fifty sites a step ran fifty replayed
    # minibatches). 2: a step costs what it did with two earlier sites; bench/scale.py measures the forgetting.
    replay_sites_per_step: int | None = Field(default=2, ge=1)
    # At least this many optimizer steps: a small site's few minibatches per epoch would otherwise leave it
    # under-trained (epochs are raised to reach it).
    min_steps: int = Field(default=0, ge=0)
    patience: int = Field(default=3, ge=1)
    seed: int = 0


@dataclass
class TrainResult:
    """What an update produces: candidate weights, consolidated EWC state, curve, timing."""

    weights: bytes
    ewc_state: bytes
    curve: list[dict[str, float]]  # epoch (int), loss, ce, penalty (+ val_loss with a validation split)
    seconds: float
    device: str
    bn_bank: bytes | None = None  # site -> BatchNorm state (learner.sitebn), under bn_policy "per_site" only
    best_epoch: int | None = None  # the epoch whose weights were kept, with early stopping
    fisher_seconds: float = 0.0  # of `seconds`, the Fisher diagonal of the new site
    node: str | None = None  # the Ray node that trained it (learner.remote); None when trained in-process


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensors(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """Validated tensors: images [N,C,H,W] at their size (uint8 where exact), labels int64 within the head's classes."""
    xt = stored(x)
    yt = torch.as_tensor(np.asarray(y)).long()
    classes = last_linear(model).out_features
    if yt.ndim != 1 or len(yt) != len(xt) or len(yt) < 2:
        raise DataError(f"need >= 2 images with one label each, got x {tuple(xt.shape)} and y {tuple(yt.shape)}")
    if int(yt.min()) < 0 or int(yt.max()) >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1}, got {int(yt.min())}..{int(yt.max())}")
    return xt, yt


def _check_state(model: nn.Module, ewc: EWCState, cfg: TrainConfig) -> None:
    """The EWC state must fit the model and the configured mode, or the penalty would be meaningless."""
    if ewc.entries and ewc.mode != cfg.ewc_mode:
        raise WeightsError(f"EWC state is in {ewc.mode!r} mode but the config asks for {cfg.ewc_mode!r}")
    shapes = {k: p.shape for k, p in model.named_parameters()}
    for key, entry in ewc.entries.items():
        for name, f in entry.fisher.items():
            if shapes.get(name) != f.shape:
                raise WeightsError(
                    f"EWC entry {key!r} has parameter {name!r} that the model lacks or shapes differently"
                )


def _split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Train and validation parts: a seeded, per-class share `fraction` held out (none when 0)."""
    if fraction <= 0:
        return x, y, None, None
    gen = torch.Generator().manual_seed(seed + 1)
    val = []
    for k in torch.unique(y):
        idx = torch.nonzero(y == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val.append(idx[: int(round(fraction * len(idx)))])
    held = torch.zeros(len(y), dtype=torch.bool)
    held[torch.cat(val)] = True
    if int(held.sum()) == 0 or int((~held).sum()) < 2:
        raise DataError(f"val_fraction {fraction} leaves no validation or too few training samples of {len(y)}")
    return x[~held], y[~held], x[held], y[held]


@torch.no_grad()
def _val_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Mean cross-entropy in eval mode: the early-stopping criterion."""
    was_training = model.training
    model.eval()
    try:
        return float(F.cross_entropy(model(as_float(x)), y))
    finally:
        model.train(was_training)


def _without(state: EWCState, names: set[str]) -> EWCState:
    """The state with the named parameters dropped from every entry (per-site BatchNorm is not penalised)."""
    entries = {
        key: EWCEntry({k: v for k, v in e.fisher.items() if k not in names},
                      {k: v for k, v in e.anchor.items() if k not in names})
        for key, e in state.entries.items()
    }
    return EWCState(state.mode, state.gamma, entries, list(state.sites))


def _reestimate(model: nn.Module, x: Tensor, keep: list[BN]) -> None:
    """Re-estimate BatchNorm statistics on x (made float32 for it), except the `keep` layers' (frozen blocks)."""
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in keep]
    reestimate_statistics(model, as_float(x))
    for m, state in zip(keep, saved, strict=True):
        m.load_state_dict(state)


def _enter_site(model: nn.Module, bank: Bank, site: str, x: Tensor, keep: list[BN]) -> None:
    """per_site: load the site's BatchNorm; a new site starts from the closest site's and re-estimates statistics."""
    if site in bank:
        apply_site_bn(model, bank[site])
        return
    if bank:
        apply_site_bn(model, bank[route(model, bank, as_float(x))])
    _reestimate(model, x, keep)


def _fisher(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig) -> dict[str, Tensor]:
    """The configured Fisher estimator at the trained weights (eval mode, float32, frozen parameters skipped)."""
    if cfg.fisher_estimator == "minibatch_squared":  # Avalanche's, kept for the benchmark's comparison
        return fisher_minibatch_squared(model, x, y, batch_size=cfg.batch_size)
    return fisher_diagonal(model, x, y, chunk_size=cfg.fisher_chunk, max_samples=cfg.fisher_samples,
                           memory_budget=cfg.fisher_memory_mb << 20 if cfg.fisher_memory_mb else None)


def _fit(
    model: nn.Module, data: tuple[Tensor, Tensor, Tensor | None, Tensor | None], loop: Loop, cfg: TrainConfig,
    still: list[BN], progress: Callable[[dict[str, float]], None] | None,
) -> tuple[list[dict[str, float]], int | None]:
    """The warm-up, then the epochs, with early stopping on the validation loss when there is a split; restores
    the best epoch. The warm-up is the curve's epoch 0."""
    x, y, xv, yv = data
    curve: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / max(1, math.ceil(len(x) / cfg.batch_size))))
    if cfg.warmup_steps:
        curve.append({"epoch": 0, "epochs": epochs, **warm_up(model, x, y, loop, cfg.warmup_steps)})
        if progress is not None:
            progress(dict(curve[-1]))
    for epoch in range(1, epochs + 1):
        optim.set_train_mode(model, still)
        started = time.perf_counter()
        row = {"epoch": epoch, "epochs": epochs, **epoch_steps(model, x, y, loop)[0]}
        row["seconds"] = time.perf_counter() - started  # the training steps alone: what a Fisher is held against
        if xv is not None and yv is not None:
            row["val_loss"] = _val_loss(model, xv, yv)
            if best is None or row["val_loss"] < best[0]:
                best = (row["val_loss"], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        curve.append(row)
        if progress is not None:
            progress(dict(row))
        if best is not None and epoch - best[1] >= cfg.patience:
            break
    if best is None:
        return curve, None
    model.load_state_dict(best[2])
    return curve, best[1]


def train_site(
    model: nn.Module, x: np.ndarray, y: np.ndarray, site: str, ewc: EWCState, cfg: TrainConfig,
    progress: Callable[[dict[str, float]], None] | None = None, bn_bank: bytes | None = None,
    replay: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> TrainResult:
    """Train the model on one site with the EWC penalty of earlier sites, then consolidate the site.

    Under bn_policy "per_site", bn_bank (learner.sitebn bytes, None for the first site) holds every earlier
    site's BatchNorm state; the result carries it with this site's entry added or replaced. `replay` holds
    remembered samples of earlier sites (learner.replay): each step also trains on a minibatch of one of
    them, through its own BatchNorm; afterwards their BatchNorm statistics are re-estimated on them, since
    the shared weights they normalise have moved. The first cfg.freeze_blocks encoder blocks stay fixed
    (requires_grad False until it returns).

    Raises:
        DataError: x or y do not fit the model.
        WeightsError: the EWC state or BatchNorm bank does not fit the model or the configured mode.
    """
    with optim.requires_grad_off(optim.frozen_parameters(model, cfg.freeze_blocks)):
        return _train_site(model, x, y, site, ewc, cfg, progress, bn_bank, replay)


def _train_site(
    model: nn.Module, x: np.ndarray, y: np.ndarray, site: str, ewc: EWCState, cfg: TrainConfig,
    progress: Callable[[dict[str, float]], None] | None, bn_bank: bytes | None,
    replay: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
) -> TrainResult:
    """train_site with the frozen blocks already frozen: setup, train, consolidate."""
    # Setup: seeds, device, data, BatchNorm policy.
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = _device()
    xt, yt = _tensors(model, x, y)
    _check_state(model, ewc, cfg)
    # The config owns mode and gamma; the state only carries what earlier sites left behind.
    ewc = EWCState(cfg.ewc_mode, cfg.ewc_gamma, ewc.entries, list(ewc.sites))
    per_site = cfg.bn_policy == "per_site"
    if per_site:  # BatchNorm is the site's own: neither penalised nor consolidated
        ewc = _without(ewc, bn_param_names(model))
    model.to(device)
    data = _split(xt.to(device), yt.to(device), cfg.val_fraction, cfg.seed)
    bank = bank_from_bytes(bn_bank) if per_site and bn_bank is not None else {}
    keep = optim.frozen_norms(model, cfg.freeze_blocks)
    if per_site:
        _enter_site(model, bank, site, data[0], keep)
    still = optim.still_norms(model, cfg.bn_policy, cfg.freeze_blocks)
    remembered = _remembered(replay, site, device) if cfg.replay_weight > 0 else {}
    if remembered and not per_site:  # one shared BatchNorm: replayed samples simply join the training data
        data = (_joined([data[0], *(rx for rx, _ in remembered.values())]),
                torch.cat([data[1], *(ry for _, ry in remembered.values())]), data[2], data[3])
    rehearsal = Rehearsal(remembered, bank, cfg.batch_size, torch.Generator().manual_seed(cfg.seed + 2),
                          cfg.replay_sites_per_step) if remembered and per_site else None
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    penalised = _without(ewc, frozen) if frozen else ewc
    loop = Loop(optim.optimizer(model, cfg.lr, cfg.head_lr_multiplier, cfg.bn_lr_multiplier),
                quadratic(penalised, device) if penalised.entries else None, cfg.ewc_lambda, cfg.replay_weight,
                cfg.batch_size,
                class_weights(data[1], last_linear(model).out_features, cfg.class_weighted),
                torch.Generator().manual_seed(cfg.seed), optim.precision(device, cfg.mixed_precision), rehearsal)

    # Train.
    curve, best_epoch = _fit(model, data, loop, cfg, still, progress)

    # Consolidate: this site's Fisher at the trained weights becomes part of the penalty for the next site.
    if per_site:  # statistics that match the final shared weights, then the site's entry in the bank
        _reestimate(model, data[0], keep)
        bank[site] = extract_site_bn(model)
    fisher_started = time.perf_counter()
    new_state = _consolidated(model, ewc, site, data[0], data[1], cfg)
    fisher_s = time.perf_counter() - fisher_started
    if rehearsal:
        _refresh_statistics(model, bank, remembered, site, keep)
    return TrainResult(
        weights=weights_to_bytes(model),
        ewc_state=state_to_bytes(new_state),
        curve=curve,
        seconds=time.perf_counter() - started,
        device=str(device),
        bn_bank=bank_to_bytes(bank) if per_site else None,
        best_epoch=best_epoch,
        fisher_seconds=fisher_s,
    )


def _consolidated(model: nn.Module, ewc: EWCState, site: str, x: Tensor, y: Tensor, cfg: TrainConfig) -> EWCState:
    """The EWC state with this site's Fisher at the trained weights (eval mode) consolidated into it; per-site
    BatchNorm parameters are the site's own, so neither penalised nor consolidated."""
    model.eval()
    anchor = trainable_params(model)
    if cfg.bn_policy == "per_site":
        anchor = {k: v for k, v in anchor.items() if k not in bn_param_names(model)}
    kept = _kept_fisher(ewc, site, anchor, cfg)
    if kept is not None:
        return consolidate(ewc, site, kept, anchor)
    fisher = {k: v for k, v in _fisher(model, x, y, cfg).items() if k in anchor}
    return consolidate(ewc, site, *_carried(ewc, fisher, anchor, model))


def _kept_fisher(ewc: EWCState, site: str, anchor: dict[str, Tensor], cfg: TrainConfig) -> dict[str, Tensor] | None:
    """The site's own Fisher, where it is kept rather than estimated again: separate mode, a site learnt before
    whose entry covers every parameter consolidated now, and refresh_fisher off."""
    entry = ewc.entries.get(site) if ewc.mode == "separate" and not cfg.refresh_fisher else None
    if entry is None or not set(anchor) <= set(entry.fisher):
        return None
    return {k: entry.fisher[k] for k in anchor}


def _joined(parts: list[Tensor]) -> Tensor:
    """Image tensors concatenated at their size: uint8 when every part is, else float32."""
    if all(p.dtype == torch.uint8 for p in parts):
        return torch.cat(parts)
    return torch.cat([as_float(p) for p in parts])


def _carried(ewc: EWCState, fisher: dict[str, Tensor], anchor: dict[str, Tensor],
             model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Online mode: a frozen parameter the running entry covers keeps its importance (this site adds 0), where
    consolidation would otherwise drop it; separate mode keeps the earlier entries as they are."""
    old = ewc.entries.get("online") if ewc.mode == "online" else None
    if old is None:
        return fisher, anchor
    params = dict(model.named_parameters())
    missing = [k for k in old.fisher if k not in fisher]
    return ({**fisher, **{k: torch.zeros_like(old.fisher[k]) for k in missing}},
            {**anchor, **{k: params[k].detach() for k in missing}})


def _remembered(replay: Mapping[str, tuple[np.ndarray, np.ndarray]] | None, site: str,
                device: torch.device) -> dict[str, tuple[Tensor, Tensor]]:
    """Earlier sites' remembered samples as tensors on the device, images at their size (uint8 where exact:
    a minibatch is made float32 only when drawn); the site being learnt is not replayed."""
    return {s: (stored(x).to(device), torch.as_tensor(np.asarray(y)).long().to(device))
            for s, (x, y) in (replay or {}).items() if s != site and len(y) >= 2}


def _refresh_statistics(model: nn.Module, bank: Bank, remembered: Mapping[str, tuple[Tensor, Tensor]],
                        site: str, keep: list[BN]) -> None:
    """Re-estimate each replayed site's BatchNorm statistics at the new shared weights; the model keeps `site`'s."""
    for other, (x, _) in remembered.items():
        if other in bank:
            apply_site_bn(model, bank[other])
            _reestimate(model, x, keep)
            bank[other] = extract_site_bn(model)
    apply_site_bn(model, bank[site])

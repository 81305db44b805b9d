"""Joint training with per-site BatchNorm and the site known: the like-for-like ceiling for continual learning.

Every site's training data at once, one network, the way clreg serves it: shared convolution and linear weights,
each site its own BatchNorm (running statistics and scale/shift). Each step takes one minibatch of one site,
the sites taking turns in shuffled rounds so each is seen equally often, through that site's BatchNorm: its
state is swapped into the network for the step and read back after. The shared weights have one Adam; each
site's scale and shift their own, so one site's moments never steer another's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clreg.learner.images import as_float, stored
from clreg.learner.models import last_linear
from clreg.learner.sitebn import BN, Bank, apply_site_bn, extract_site_bn, reestimate_statistics

Arrays = tuple[np.ndarray, np.ndarray]


def _rounds(sites: list[str], steps: int, gen: torch.Generator) -> list[str]:
    """`steps` site names: shuffled rounds of every site."""
    order: list[str] = []
    while len(order) < steps:
        order += [sites[i] for i in torch.randperm(len(sites), generator=gen).tolist()]
    return order[:steps]


def _optimizers(model: nn.Module, sites: list[str], lr: float,
                bn_lr_multiplier: float) -> tuple[torch.optim.Optimizer, dict[str, torch.optim.Optimizer]]:
    """Adam over the shared weights (the head included), and one Adam per site over the BatchNorm scale/shift."""
    norm = [p for m in model.modules() if isinstance(m, BN) for p in m.parameters(recurse=False)]
    norm_ids = {id(p) for p in norm}
    shared = torch.optim.Adam([p for p in model.parameters() if id(p) not in norm_ids], lr=lr)
    return shared, {s: torch.optim.Adam(norm, lr=lr * bn_lr_multiplier) for s in sites}


def train_joint(model: nn.Module, data: Mapping[str, Arrays], steps: int, lr: float = 2e-3,
                bn_lr_multiplier: float = 30.0, batch_size: int = 32, seed: int = 0) -> Bank:
    """Train `model` in place on every site's (x, y) for `steps` steps; each site's BatchNorm state (the bank).

    Each site's BatchNorm starts from the model's own, its statistics estimated on its data.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tensors = {s: (stored(x), torch.as_tensor(np.asarray(y)).long()) for s, (x, y) in data.items()}
    start = extract_site_bn(model)
    bank: Bank = {}
    for site, (x, _) in tensors.items():
        apply_site_bn(model, start)
        reestimate_statistics(model, as_float(x))
        bank[site] = extract_site_bn(model)
    sites = sorted(tensors)
    shared, per_site = _optimizers(model, sites, lr, bn_lr_multiplier)
    classes = last_linear(model).out_features
    model.train()
    for site in _rounds(sites, steps, gen):
        x, y = tensors[site]
        idx = torch.randperm(len(x), generator=gen)[:batch_size]
        if len(idx) < 2 or int(y.max()) >= classes:
            continue
        apply_site_bn(model, bank[site])
        loss = F.cross_entropy(model(as_float(x[idx])), y[idx])
        shared.zero_grad(set_to_none=True)
        per_site[site].zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        shared.step()
        per_site[site].step()
        bank[site] = extract_site_bn(model)
    model.eval()
    return bank

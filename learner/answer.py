"""How a version answers a site: which network (the site's own BatchNorm, or for a site it never learnt the
entry that explains the images best) and which scaling (the site's temperature and, binary models, class
bias; else the pooled temperature).

The gate, the calibration step and the serving replicas all go through `Answerer`, so the accuracy a gate
judges and the temperatures calibration fits are those of exactly what /v1/predict answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from learner.sitebn import Bank, route, site_model
from registry.records import Calibration


@dataclass(frozen=True)
class Answerer:
    """One version's network in eval mode, one copy per site of its BatchNorm bank, and its temperatures."""

    module: nn.Module
    bank: Bank | None = None
    sites: dict[str, nn.Module] = field(default_factory=dict)
    calibration: Calibration | None = None

    @classmethod
    def of(cls, module: nn.Module, bank: Bank | None, calibration: Calibration | None = None) -> Answerer:
        module = module.eval()
        sites = {s: site_model(module, bank, s).eval() for s in bank} if bank else {}
        return cls(module=module, bank=bank, sites=sites, calibration=calibration)

    def pick(self, site: str | None, x: torch.Tensor) -> tuple[nn.Module, str | None, bool]:
        """The network for these inputs, the site whose BatchNorm it carries, and whether that site was routed
        (by MAP over these inputs) rather than named."""
        if not self.sites:
            return self.module, None, False
        if site in self.sites:
            return self.sites[site], site, False
        chosen = route(self.module, self.bank or {}, x)
        return self.sites[chosen], chosen, True

    def scaling(self, site: str | None) -> tuple[str | None, float, float]:
        """The site whose scaling calibrates the logits (None: the pooled one), its temperature and bias."""
        if self.calibration is None:
            return None, 1.0, 0.0
        if site in self.calibration.sites:
            fit = self.calibration.sites[site]
            return site, fit.temperature, fit.bias
        return None, self.calibration.pooled.temperature, 0.0

    def labels(self, site: str | None, logits: np.ndarray) -> np.ndarray:
        """The labels /v1/predict answers for these logits of `site`: the argmax of the calibrated
        probabilities (a temperature never moves it; a binary site's class bias can)."""
        _, temperature, bias = self.scaling(site)
        if not bias:
            return np.asarray(logits).argmax(axis=1)
        z = np.asarray(logits, dtype=np.float64) / temperature
        return (z[:, 1] + bias > z[:, 0]).astype(np.int64)

    def networks(self) -> list[nn.Module]:
        """Every network this answerer may run (for a warm-up)."""
        return [self.module, *self.sites.values()]

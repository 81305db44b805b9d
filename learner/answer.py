"""How a version answers a site: which network (the site's own BatchNorm, or for a site it never learnt the
entry that explains the images best) and which temperature (the site's, else the pooled one).

The gate, the calibration step and the serving replicas all go through `Answerer`, so the accuracy a gate
judges and the temperatures calibration fits are those of exactly what /v1/predict answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from clreg.learner.sitebn import Bank, route, site_model


class Scaling(Protocol):
    """One temperature: a site's, or the pooled one."""

    @property
    def temperature(self) -> float: ...


class Temperatures(Protocol):
    """What an answer reads of a version's calibration (the registry's Calibration record has it): the
    temperature of each learnt site, and the pooled one for any other request."""

    @property
    def sites(self) -> Mapping[str, Scaling]: ...

    @property
    def pooled(self) -> Scaling: ...


@dataclass(frozen=True)
class Answerer:
    """One version's network in eval mode, one copy per site of its BatchNorm bank, and its temperatures."""

    module: nn.Module
    bank: Bank | None = None
    sites: dict[str, nn.Module] = field(default_factory=dict)
    calibration: Temperatures | None = None

    @classmethod
    def of(cls, module: nn.Module, bank: Bank | None, calibration: Temperatures | None = None) -> Answerer:
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

    def temperature(self, site: str | None) -> tuple[str | None, float]:
        """The site whose temperature scales the logits (None: the pooled one) and the temperature."""
        if self.calibration is None:
            return None, 1.0
        if site is not None and site in self.calibration.sites:
            return site, self.calibration.sites[site].temperature
        return None, self.calibration.pooled.temperature

    def networks(self) -> list[nn.Module]:
        """Every network this answerer may run (for a warm-up)."""
        return [self.module, *self.sites.values()]

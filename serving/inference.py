"""Inference for a batch of requests: one forward pass per network, per-request BatchNorm and temperature.

Requests in one Serve batch may name different sites, be routed to different sites' BatchNorm, or even
hold different versions across a swap; each request keeps the (version, network) it was admitted with.
Requests that share a network are concatenated into one forward pass, then split back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from learner.sitebn import Bank, route
from registry.records import Calibration, InputSpec


@dataclass(frozen=True)
class Loaded:
    """What answers a request: swapped as one reference so version and weights never disagree."""

    version: int
    module: torch.nn.Module
    spec: InputSpec
    bank: Bank | None = None
    sites: dict[str, torch.nn.Module] = field(default_factory=dict)  # one copy per site's BatchNorm
    calibration: Calibration | None = None
    device: str = "cpu"

    def pick(self, site: str | None, x: torch.Tensor) -> tuple[torch.nn.Module, str | None, bool]:
        """The network for these inputs: the named site's BatchNorm, else the MAP-routed site's."""
        if not self.sites:
            return self.module, None, False
        if site in self.sites:
            return self.sites[site], site, False
        chosen = route(self.module, self.bank or {}, x)
        return self.sites[chosen], chosen, True

    def temperature(self, site: str | None) -> tuple[str | None, float]:
        """The site whose temperature scales these logits (None: the pooled one) and the temperature."""
        if self.calibration is None:
            return None, 1.0
        if site in self.calibration.sites:
            return site, self.calibration.sites[site].temperature
        return None, self.calibration.pooled.temperature


@dataclass(frozen=True)
class Job:
    """One request's inputs [N, C, H, W], the site it names, and the version it was admitted with."""

    loaded: Loaded
    x: torch.Tensor
    site: str | None


@dataclass(frozen=True)
class Scores:
    """One request's calibrated probabilities and which site's BatchNorm and temperature produced them."""

    probabilities: np.ndarray
    bn_site: str | None
    routed: bool
    temperature_site: str | None
    temperature: float


@torch.no_grad()
def infer(jobs: list[Job]) -> list[Scores]:
    """Scores for every job, in order; one forward pass per distinct network among them."""
    xs = [job.x.to(job.loaded.device) for job in jobs]
    picks = [job.loaded.pick(job.site, x) for job, x in zip(jobs, xs, strict=True)]
    groups: dict[int, list[int]] = {}
    for i, (net, _, _) in enumerate(picks):
        groups.setdefault(id(net), []).append(i)
    logits: dict[int, torch.Tensor] = {}
    for members in groups.values():
        out = picks[members[0]][0](torch.cat([xs[i] for i in members]))
        for i, part in zip(members, out.split([len(xs[i]) for i in members]), strict=True):
            logits[i] = part
    scores = []
    for i, (job, (_, bn_site, routed)) in enumerate(zip(jobs, picks, strict=True)):
        scaled_by, t = job.loaded.temperature(bn_site or job.site)
        scores.append(Scores(torch.softmax(logits[i] / t, dim=1).cpu().numpy(), bn_site, routed, scaled_by, t))
    return scores

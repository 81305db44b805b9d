"""Inference for a batch of requests: one forward pass per network, per-request BatchNorm and temperature.

Requests in one Serve batch may name different sites, be routed to different sites' BatchNorm, or even
hold different versions across a swap; each request keeps the (version, network) it was admitted with.
Requests that share a network are concatenated into one forward pass, then split back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clreg.learner.answer import Answerer
from clreg.registry.findings import Calibration
from clreg.registry.readiness import SiteReadiness, assess
from clreg.registry.records import InputSpec, Readiness


@dataclass(frozen=True)
class Loaded:
    """What answers a request: swapped as one reference so version and weights never disagree. How the version
    answers a site (its BatchNorm, its temperature) is the Answerer's, the same one the gate scored."""

    version: int
    answerer: Answerer
    spec: InputSpec
    device: str = "cpu"
    calibration: Calibration | None = None  # the version's record, whose temperatures the answerer applies
    rules: Readiness = Readiness()
    metric: str = "accuracy"  # the model's task metric (Model.task_metric) that readiness judges
    readiness: dict[str, SiteReadiness] = field(default_factory=dict)  # per learnt site, under these rules

    def readiness_of(self, site: str) -> SiteReadiness:
        """Whether this version is validated at `site` (a site it never learnt is not: `assess` says why)."""
        return self.readiness.get(site) or assess(site, self.calibration, self.rules, self.metric)


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
    picks = [job.loaded.answerer.pick(job.site, x) for job, x in zip(jobs, xs, strict=True)]
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
        scaled_by, t = job.loaded.answerer.temperature(bn_site or job.site)
        scores.append(Scores(torch.softmax(logits[i] / t, dim=1).cpu().numpy(), bn_site, routed, scaled_by, t))
    return scores

"""One update: the new sites in order, each with the EWC penalty of earlier sites and rehearsal of the
remembered ones, then the result scored on validation data that no candidate trained on.

This is what one candidate of a candidate search runs (learner.remote runs K of them as Ray tasks); the
caller compares candidates by `val_accuracy` and sends only the chosen one to the gate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from clreg.learner.evaluate import site_metrics
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import load_weights
from clreg.learner.sitebn import bank_from_bytes
from clreg.learner.train import TrainConfig, TrainResult, train_site

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class UpdateData:
    """What an update learns and how it is judged."""

    sites: list[tuple[str, np.ndarray, np.ndarray]]  # the new data, in order: (site, x, y)
    replay: dict[str, Arrays] = field(default_factory=dict)  # remembered samples of earlier sites
    replayable: frozenset[str] = frozenset()  # new sites whose data may be replayed while later ones train
    val: dict[str, Arrays] = field(default_factory=dict)  # held apart from training, for choosing a candidate


@dataclass
class UpdateResult:
    """The trained candidate: the last site's TrainResult (weights, EWC state, bank), the curves of all its
    sites, and its accuracy per site on the validation data."""

    result: TrainResult
    curve: list[dict[str, float]]
    val_accuracy: dict[str, float]
    fisher_seconds: float

    @property
    def score(self) -> float:
        """Mean validation accuracy over sites: the selection criterion (every site counts the same)."""
        return float(np.mean(list(self.val_accuracy.values()))) if self.val_accuracy else float("nan")


def train_update(model: nn.Module, data: UpdateData, ewc: EWCState, cfg: TrainConfig, bn_bank: bytes | None,
                 progress: Callable[[str, dict], None] | None = None) -> UpdateResult:
    """Train the sites in order (a site learnt here is replayed while the later ones train, where allowed),
    then score every validation site under its own BatchNorm."""
    replay = dict(data.replay)
    curve: list[dict[str, float]] = []
    result: TrainResult | None = None
    fisher_s = 0.0
    for site, x, y in data.sites:
        report = (lambda row, s=site: progress(s, row)) if progress else None
        result = train_site(model, x, y, site, ewc, cfg, progress=report, bn_bank=bn_bank, replay=replay)
        load_weights(model, result.weights)
        ewc, bn_bank = state_from_bytes(result.ewc_state), result.bn_bank
        curve.extend({**row, "site": site} for row in result.curve)  # type: ignore[dict-item]
        fisher_s += result.fisher_seconds
        if site in data.replayable:
            replay[site] = (x, y)
    if result is None:
        raise ValueError("an update needs at least one site")
    return UpdateResult(result, curve, _val_accuracy(model, bn_bank, data.val), fisher_s)


def _val_accuracy(model: nn.Module, bn_bank: bytes | None, val: Mapping[str, Arrays]) -> dict[str, float]:
    bank = bank_from_bytes(bn_bank) if bn_bank else {}
    return {site: site_metrics(model, x, y, site_bn=bank.get(site)).accuracy
            for site, (x, y) in val.items() if len(y)}

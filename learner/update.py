"""One update: the new sites in order, each with the EWC penalty of earlier sites and rehearsal of the
remembered ones, then the result scored on validation data that no candidate trained on.

This is what one candidate of a candidate search runs (learner.remote runs K of them as Ray tasks); the
caller compares candidates by `score` (the model's task metric, as the gate judges it) and sends only the
chosen one to the gate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from clreg.learner import taskmetric
from clreg.learner.evaluate import predict_proba
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import load_weights
from clreg.learner.sitebn import apply_site_bn, bank_from_bytes
from clreg.learner.taskmetric import Scoring
from clreg.learner.train import TrainConfig, TrainResult, train_site

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class UpdateData:
    """What an update learns and how it is judged."""

    sites: list[tuple[str, np.ndarray, np.ndarray]]  # the new data, in order: (site, x, y)
    replay: dict[str, Arrays] = field(default_factory=dict)  # remembered samples of earlier sites
    replayable: frozenset[str] = frozenset()  # new sites whose data may be replayed while later ones train
    val: dict[str, Arrays] = field(default_factory=dict)  # held apart from training, for choosing a candidate
    scoring: Scoring = Scoring()  # how the validation data is scored: the model's task metric


@dataclass
class UpdateResult:
    """The trained candidate: the last site's TrainResult (weights, EWC state, bank), the curves of all its
    sites, its accuracy per site on the validation data, and its task metric there (`val_values`, nan where the
    metric is undefined on a site's validation samples, e.g. AUROC of one class)."""

    result: TrainResult
    curve: list[dict[str, float]]
    val_accuracy: dict[str, float]
    fisher_seconds: float
    metric: str = "accuracy"
    val_values: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = True

    @property
    def score(self) -> float:
        """Mean over sites of the validation metric where it is defined, oriented so higher is better (a cost
        negated): the selection criterion (every site counts the same); nan where it is defined on none."""
        values = [v for v in self.val_values.values() if not math.isnan(v)]
        if not values:
            return float("nan")
        return (1.0 if self.higher_is_better else -1.0) * float(np.mean(values))


def train_update(model: nn.Module, data: UpdateData, ewc: EWCState, cfg: TrainConfig, bn_bank: bytes | None,
                 progress: Callable[[str, dict[str, float]], None] | None = None) -> UpdateResult:
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
    accuracy, values = _validate(model, bn_bank, data.val, data.scoring)
    return UpdateResult(result, curve, accuracy, fisher_s, data.scoring.metric, values,
                        data.scoring.higher_is_better)


def _validate(model: nn.Module, bn_bank: bytes | None, val: Mapping[str, Arrays],
              scoring: Scoring) -> tuple[dict[str, float], dict[str, float]]:
    """Per validation site, under its own BatchNorm: accuracy, and the task metric."""
    bank = bank_from_bytes(bn_bank) if bn_bank else {}
    accuracy, values = {}, {}
    for site, (x, y) in val.items():
        if not len(y):
            continue
        net = model
        if site in bank:
            net = copy.deepcopy(model)
            apply_site_bn(net, bank[site])
        proba = predict_proba(net, x)
        accuracy[site] = float(np.mean(proba.argmax(axis=1) == np.asarray(y)))
        values[site] = taskmetric.value(scoring, y, proba)
    return accuracy, values

"""Candidate search: K settings trained in parallel as Ray tasks, one chosen on validation data.

The validation data is carved from the update's own training samples and from each remembered site's
replay memory; the gate's held-out sets are never seen here. Sites that forbid replay contribute neither
memory nor validation data: EWC and the gate protect them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clreg import parts
from clreg.context import Stores
from clreg.gating import scoring_of
from clreg.learner.errors import TrainingFailed
from clreg.learner.models import normalisation_of
from clreg.learner.remote import search_on_ray
from clreg.learner.replay import Memory
from clreg.learner.train import TrainConfig
from clreg.learner.update import UpdateData, UpdateResult
from clreg.registry.errors import NotFound
from clreg.registry.records import Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.settings import SearchConfig

Arrays = tuple[np.ndarray, np.ndarray]
Progress = Callable[[int, str, dict[str, float]], None]


@dataclass
class Search:
    """A finished search: the chosen candidate, its settings, and every candidate's line for the lineage."""

    chosen: UpdateResult
    settings: TrainConfig
    lines: list[dict[str, Any]]


def carve(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """(fit, validation): a seeded per-class share `fraction` set apart; a class with one sample stays in fit."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        val[idx[:k]] = True
    return (x[~val], y[~val]), (x[val], y[val])


def allows_replay(registry: RedisRegistry, site: str) -> bool:
    """A site's data policy (set when it is added); a site without a record keeps the default (allowed)."""
    try:
        return registry.get_site(site).replay
    except NotFound:
        return True


def memory_of(stores: Stores, model: Model, version: ModelVersion | None) -> Memory:
    """The version's replay memory, its images read from the batches it references."""
    return parts.get_replay(stores.artifacts, version.artifacts, stores.images(model)) if version else Memory()


def update_data(registry: RedisRegistry, new: dict[str, Arrays], memory: Memory, fraction: float, seed: int,
                carved: bool = True) -> UpdateData:
    """The new sites and every remembered site that still allows replay, split into fit and validation parts
    (`carved`, a per-class `fraction` for validation), or whole (the chosen candidate's refit)."""
    data = UpdateData(sites=[], replayable=frozenset(s for s in new if allows_replay(registry, s)))
    for site, (x, y) in new.items():
        fit, val = carve(x, y, fraction, _seed(seed, site)) if carved else ((x, y), (x[:0], y[:0]))
        data.sites.append((site, *fit))
        data.val[site] = val
    for site in memory.sites:
        if site in new or not allows_replay(registry, site):
            continue
        arrays = memory.arrays(site)
        fit, val = carve(*arrays, fraction, _seed(seed, site)) if carved else (arrays, (arrays[0][:0], arrays[1][:0]))
        data.replay[site], data.val[site] = fit, val
    return data


def run(cfg: SearchConfig, model: Model, data: UpdateData, base: TrainConfig, scale: float,
        artifacts: tuple[bytes | None, bytes | None, bytes | None], progress: Progress | None = None,
        stop: object = None, refit: UpdateData | None = None) -> Search:
    """Train every configured candidate from `base` (its protection of earlier sites x `scale`) and choose the
    best mean validation score in the model's task metric (the gate's; a cost negated, so higher is better);
    with `refit` (the same data, whole), train the chosen settings once more on it: the validation samples
    teach too.

    Raises:
        TrainingFailed: every candidate failed, or the refit did (the reasons are in the message).
    """
    overrides = cfg.candidates or [{}]
    settings = [base.model_copy(update=_scaled(o, base, scale)) for o in overrides]
    spec = model.input
    shape = (spec.channels, spec.height, spec.width, spec.classes)

    def train(on: UpdateData, candidates: list[TrainConfig], report: Progress | None) -> list[Any]:
        """Every candidate as its own Ray task, from the production version's artifacts."""
        return search_on_ray(model.factory, model.factory_kwargs, shape, *artifacts, on, candidates,
                             progress=report, timeout_s=cfg.timeout_s, stop=stop,  # type: ignore[arg-type]
                             resource=cfg.resource, normalisation=normalisation_of(model))

    scoring = scoring_of(model)
    outcomes = train(dataclasses.replace(data, scoring=scoring), settings, progress)
    ok = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, UpdateResult)]
    if not ok:
        raise TrainingFailed("; ".join(f"candidate {i + 1}: {o}" for i, o in enumerate(outcomes)))
    best = max(ok, key=lambda io: (np.nan_to_num(io[1].score, nan=-math.inf), -io[0]))[0]
    lines = [_line(_effective(overrides[i], settings[i]), o, i == best) for i, o in enumerate(outcomes)]
    chosen = outcomes[best]
    if refit is not None:
        [chosen] = train(dataclasses.replace(refit, scoring=scoring), [settings[best]], None)
        if isinstance(chosen, TrainingFailed):
            raise chosen
    return Search(chosen=chosen, settings=settings[best], lines=lines)


def _scaled(override: dict[str, Any], base: TrainConfig, scale: float) -> dict[str, Any]:
    """A candidate's overrides with its protection of earlier sites x `scale`: a retry after forgetting
    raises the EWC penalty and the weight of rehearsal by the retry factor."""
    return {**override, "ewc_lambda": override.get("ewc_lambda", base.ewc_lambda) * scale,
            "replay_weight": override.get("replay_weight", base.replay_weight) * scale}


def _effective(override: dict[str, Any], settings: TrainConfig) -> dict[str, Any]:
    """The settings a candidate changed, with the values it trained with (its lambda always)."""
    return {k: getattr(settings, k) for k in sorted({*override, "ewc_lambda", "replay_weight"})}


def _line(override: dict[str, Any], outcome: UpdateResult | TrainingFailed, chosen: bool) -> dict[str, Any]:
    if isinstance(outcome, TrainingFailed):
        return {"settings": override, "chosen": False, "error": str(outcome)}
    accuracy = list(outcome.val_accuracy.values())
    return {"settings": override, "chosen": chosen, "score": round(outcome.score, 4), "metric": outcome.metric,
            "val_values": {s: _rounded(v) for s, v in outcome.val_values.items()},
            "val_accuracy": {s: round(a, 4) for s, a in outcome.val_accuracy.items()},
            "mean_val_accuracy": round(float(np.mean(accuracy)), 4) if accuracy else float("nan"),
            "best_epochs": outcome.result.best_epoch}


def _rounded(x: float) -> float | None:
    """A figure for the lineage (JSON): 4 places, None where it is undefined."""
    return None if math.isnan(x) else round(x, 4)


def _seed(seed: int, site: str) -> int:
    return seed * 1_000_003 + int(hashlib.sha256(site.encode()).hexdigest()[:8], 16)

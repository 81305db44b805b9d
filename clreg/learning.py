"""Learn: search candidates from production on the new batches (Ray tasks in parallel); assemble the chosen one
into a version (artifacts, drift reference, calibration) for the pipeline to register."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clreg import __version__, search
from clreg.calibration import calibrate_version
from clreg.context import Context
from clreg.reference import build_reference
from learner.replay import Memory, memory_to_bytes
from learner.sitebn import bank_from_bytes
from learner.train import TrainConfig
from registry.artifacts import Artifact, VersionArtifacts
from registry.records import Batch, Calibration, Lineage, Model, ModelVersion

Progress = Callable[[int, str, dict[str, float]], None]  # (candidate, site, curve row) as each epoch finishes


@dataclass(frozen=True)
class Learnt:
    """What an update's training produced, before it is a version: the search and the replay memory after it."""

    batches: list[Batch]
    found: search.Search
    memory: Memory
    seed: int
    train_s: float


def learn(ctx: Context, model: Model, production: ModelVersion | None, batches: list[Batch],
          progress: Progress | None = None, train: TrainConfig | None = None,
          stop: threading.Event | None = None) -> Learnt:
    """Search the configured candidates from production on the batches' train splits (Ray tasks in parallel).

    `train` overrides the configured settings for this update (a retry with a stronger penalty); `stop`
    cancels the running training tasks (TrainingInterrupted).
    """
    cfg = train or ctx.train
    started = time.perf_counter()
    stored = VersionArtifacts(ctx.artifacts, production) if production else None
    parent = tuple(stored.optional(a) if stored else None for a in (Artifact.WEIGHTS, Artifact.EWC, Artifact.BN_BANK))
    new_ids = [b.id for b in batches]
    new = ctx.split_by_site(model, new_ids, "train")
    memory = search.memory_of(ctx, production)
    data = search.update_data(ctx, new, memory, cfg.seed)
    whole = search.update_data(ctx, new, memory, cfg.seed, carved=False) if ctx.search.refit else None
    found = search.run(ctx, model, production, data, cfg, parent, progress, stop, refit=whole)  # type: ignore[arg-type]
    for site, (x, y) in new.items():  # remembered for later updates: all its training samples, where allowed
        if site in data.replayable:
            memory.add(site, x, y, ctx.search.replay_capacity, cfg.seed)
    memory.sites = {s: m for s, m in memory.sites.items() if s in new or search.allows_replay(ctx, s)}
    return Learnt(batches=batches, found=found, memory=memory, seed=cfg.seed, train_s=time.perf_counter() - started)


def assemble(ctx: Context, model: Model, production: ModelVersion | None, learnt: Learnt) -> ModelVersion:
    """The chosen candidate as a version to register: its artifacts stored, its drift reference built, its
    per-site calibration fitted; the store assigns its number when it is registered."""
    trained = time.perf_counter()
    found, memory, batches = learnt.found, learnt.memory, learnt.batches
    result, new_ids = found.chosen.result, [b.id for b in batches]
    earlier_sites = production.lineage.sites if production else []
    sites = earlier_sites + sorted({b.site for b in batches} - set(earlier_sites))
    weights_sha = ctx.artifacts.put(result.weights)
    every_batch = ctx.learnt_batches(production) + new_ids  # what the version has learnt, parents included
    reference = build_reference(ctx, model, weights_sha, every_batch)
    referenced = time.perf_counter()
    bank = result.bn_bank
    calibration = calibrate_version(ctx, model, weights_sha, bank_from_bytes(bank) if bank else None, every_batch)
    version = ModelVersion(
        model=model.name,
        number=1,  # a placeholder: the store assigns the real number
        lineage=Lineage(parent=production.number if production else None, batch_ids=new_ids, sites=sites,
                        train_settings={**found.settings.model_dump(), "device": result.device}, seed=learnt.seed,
                        code_version=__version__, search=found.lines,
                        timings={"train_s": round(learnt.train_s, 3),
                                 "fisher_s": round(found.chosen.fisher_seconds, 3), "candidates": len(found.lines),
                                 "reference_s": round(referenced - trained, 3),
                                 "calibration_s": round(time.perf_counter() - referenced, 3)}),
        artifacts={Artifact.WEIGHTS: weights_sha, Artifact.EWC: ctx.artifacts.put(result.ewc_state),
                   Artifact.REFERENCE: ctx.artifacts.put(reference),
                   Artifact.CALIBRATION: ctx.artifacts.put(calibration.model_dump_json().encode()),
                   **({Artifact.BN_BANK: ctx.artifacts.put(bank)} if bank is not None else {}),
                   **({Artifact.REPLAY: ctx.artifacts.put(memory_to_bytes(memory))} if memory.sites else {})},
        metrics={"final_loss": float(found.chosen.curve[-1]["loss"]) if found.chosen.curve else float("nan"),
                 "validation_accuracy": next(line["score"] for line in found.lines if line["chosen"]),
                 "heldout_ece": _site_mean(calibration, "ece"),
                 "heldout_ece_calibrated": _site_mean(calibration, "ece_calibrated")},
    )
    return version


def _site_mean(calibration: Calibration, figure: str) -> float:
    """Mean over learnt sites of one calibration figure (ECE before, or cross-fitted after, scaling)."""
    return float(np.mean([getattr(s, figure) for s in calibration.sites.values()]))

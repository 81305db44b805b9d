"""Learn: search candidates from production on the new batches (Ray tasks in parallel); assemble the chosen one
into a version (artifacts, drift reference, calibration) for the pipeline to register."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clreg import __version__, parts, scores, search
from clreg.calibration import calibrate_version
from clreg.context import Stores
from clreg.learner.answer import Answerer
from clreg.learner.models import normalisation_of
from clreg.learner.remote import answer_on_ray, cluster_has_gpu
from clreg.learner.replay import Memory
from clreg.learner.sitebn import bank_from_bytes
from clreg.learner.train import TrainConfig
from clreg.monitor.features import FeatureConfig
from clreg.reference import embed_fn, reference_bytes, reference_sample
from clreg.registry.artifacts import Artifact, VersionArtifacts
from clreg.registry.findings import Calibration
from clreg.registry.records import Batch, Lineage, Model, ModelVersion
from clreg.settings import SearchConfig

Progress = Callable[[int, str, dict[str, float]], None]  # (candidate, site, curve row) as each epoch finishes


@dataclass(frozen=True)
class Learnt:
    """What an update's training produced, before it is a version: the search and the replay memory after it."""

    batches: list[Batch]
    found: search.Search
    memory: Memory
    seed: int
    train_s: float


def learn(stores: Stores, train: TrainConfig, cfg: SearchConfig, model: Model, production: ModelVersion | None,
          batches: list[Batch], *, scale: float = 1.0, progress: Progress | None = None,
          stop: threading.Event | None = None) -> Learnt:
    """Search the configured candidates from production on the batches' train splits (Ray tasks in parallel).

    `scale` multiplies the protection of earlier sites (a retry after forgetting); `stop` cancels the running
    training tasks (TrainingInterrupted).
    """
    started = time.perf_counter()
    parent = parent_artifacts(stores, model, production)
    new_ids = [b.id for b in batches]
    new = stores.split_by_site(model, new_ids, "train")
    memory = search.memory_of(stores, model, production)
    data = search.update_data(stores.registry, new, memory, cfg.val_fraction, train.seed)
    whole = search.update_data(stores.registry, new, memory, cfg.val_fraction, train.seed, carved=False) \
        if cfg.refit else None
    found = search.run(cfg, model, data, train, scale, parent, progress, stop, refit=whole)
    refs = stores.train_refs(batches)  # the records in hand: no second read of each batch
    for site, (x, y) in new.items():  # remembered for later updates: all its training samples, where allowed
        if site in data.replayable:
            memory.add(site, x, y, cfg.replay_capacity, train.seed, refs[site])
    memory.sites = {s: m for s, m in memory.sites.items() if s in new or search.allows_replay(stores.registry, s)}
    return Learnt(batches=batches, found=found, memory=memory, seed=train.seed, train_s=time.perf_counter() - started)


def answers_remotely(cfg: SearchConfig) -> bool:
    """Whether a version's held-out sets and drift reference are answered in a Ray task: always with
    `score_on="ray"`; with "auto" when the cluster has a GPU, where the network runs far faster than in the
    daemon's process (on CPUs alone a task would run on the same kind of cores, after starting a worker)."""
    return cfg.score_on == "ray" or (cfg.score_on == "auto" and cluster_has_gpu())


def parent_artifacts(stores: Stores, model: Model, production: ModelVersion | None
                     ) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(weights, EWC state, BatchNorm bank) an update starts from: production's; for the first version, the
    model's initial weights (an uploaded checkpoint adapted to its network) with no EWC state nor bank, or
    nothing (the factory's own initialisation)."""
    if production is None:
        return (stores.artifacts.get(model.weights) if model.weights else None), None, None
    stored = VersionArtifacts(stores.artifacts, production)
    weights, bank = (stored.optional(a) for a in (Artifact.WEIGHTS, Artifact.BN_BANK))
    return weights, parts.get_ewc(stores.artifacts, production.artifacts), bank


def assemble(stores: Stores, features: FeatureConfig, reference_samples: int, model: Model,
             production: ModelVersion | None, learnt: Learnt, remote: bool = False) -> ModelVersion:
    """The chosen candidate as a version to register: its artifacts stored, its drift reference built (from
    `reference_samples` of what it learnt), its held-out sets answered and its per-site calibration fitted; the
    store numbers it. `remote`: the held-out answers and the reference's embeddings come from a Ray task where
    training runs (`answers_remotely`), not from this process."""
    trained = time.perf_counter()
    found, memory, batches = learnt.found, learnt.memory, learnt.batches
    result, new_ids = found.chosen.result, [b.id for b in batches]
    earlier_sites = production.lineage.sites if production else []
    sites = earlier_sites + sorted({b.site for b in batches} - set(earlier_sites))
    artifacts = stores.artifacts
    weights_sha = artifacts.put(result.weights)
    every_batch = stores.learnt_batches(production) + new_ids  # what the version has learnt, parents included
    reference_sampled = reference_sample(stores, reference_samples, learnt.seed, model, every_batch)
    answer = _answer_remotely if remote else _answer_here
    reference, scored, referenced = answer(stores, features, model, result.weights, weights_sha, result.bn_bank,
                                           scores.batches_by_site(stores, every_batch), reference_sampled)
    bank = result.bn_bank
    calibration = calibrate_version(model, scored, learnt.seed)
    version = ModelVersion(
        model=model.name,
        number=1,  # a placeholder: the store assigns the real number
        lineage=Lineage(parent=production.number if production else None, batch_ids=new_ids, sites=sites,
                        train_settings={**found.settings.model_dump(), "device": result.device,
                                        "node": result.node}, seed=learnt.seed,
                        code_version=__version__, search=found.lines,
                        timings={"train_s": round(learnt.train_s, 3),
                                 "fisher_s": round(found.chosen.fisher_seconds, 3), "candidates": len(found.lines),
                                 **_epoch_seconds(found.chosen.curve),
                                 "reference_s": round(referenced - trained, 3),
                                 "calibration_s": round(time.perf_counter() - referenced, 3)}),
        artifacts={**parts.put_ewc(artifacts, result.ewc_state, result.weights, weights_sha,
                                                  production.artifacts if production else None),
                   Artifact.REFERENCE: artifacts.put(reference),
                   Artifact.CALIBRATION: artifacts.put(calibration.model_dump_json().encode()),
                   Artifact.SCORES: artifacts.put(scores.to_bytes(scored)),
                   **({Artifact.BN_BANK: artifacts.put(bank)} if bank is not None else {}),
                   **parts.put_replay(artifacts, memory)},
        metrics={"final_loss": float(found.chosen.curve[-1]["loss"]) if found.chosen.curve else float("nan"),
                 "validation_accuracy": next(line["mean_val_accuracy"] for line in found.lines if line["chosen"]),
                 "validation_score": next(line["score"] for line in found.lines if line["chosen"]),
                 "heldout_ece": _site_mean(calibration, "ece"),
                 "heldout_ece_calibrated": _site_mean(calibration, "ece_calibrated")},
    )
    return version


Sample = tuple[np.ndarray, np.ndarray]


def _answer_here(stores: Stores, features: FeatureConfig, model: Model, _weights: bytes, weights_sha: str,
                 bank: bytes | None, by_site: dict[str, list[str]], sample: Sample
                 ) -> tuple[bytes, scores.Scores, float]:
    """(drift reference, held-out scores, when the reference was done), computed in this process."""
    net = stores.module(model, weights_sha)  # one network for both: embedding leaves it as it was
    reference = reference_bytes(embed_fn(net), *sample, features)
    referenced = time.perf_counter()
    answerer = Answerer.of(net, bank_from_bytes(bank) if bank else None)
    return reference, scores.answer(stores, model, answerer, by_site), referenced


def _answer_remotely(stores: Stores, features: FeatureConfig, model: Model, weights: bytes, _weights_sha: str,
                     bank: bytes | None, by_site: dict[str, list[str]], sample: Sample
                     ) -> tuple[bytes, scores.Scores, float]:
    """The same, the network run in one Ray task where training runs (its GPU, when the cluster has one)."""
    sets = scores.heldout_sets(stores, model, by_site)
    spec = model.input
    logits, embedded = answer_on_ray(model.factory, dict(model.factory_kwargs),
                                     (spec.channels, spec.height, spec.width, spec.classes), weights, bank,
                                     {s: x for s, (x, _) in sets.items()}, sample[0], normalisation_of(model))
    assert embedded is not None  # the task embeds the images it is given
    reference = reference_bytes(lambda _x: embedded, *sample, features)  # the task embedded exactly sample[0]
    return reference, scores.from_logits(by_site, sets, logits), time.perf_counter()


def _site_mean(calibration: Calibration, figure: str) -> float:
    """Mean over learnt sites of one calibration figure (ECE before, or cross-fitted after, scaling)."""
    return float(np.mean([getattr(s, figure) for s in calibration.sites.values()]))


def _epoch_seconds(curve: list[dict[str, float]]) -> dict[str, float]:
    """{"epoch_s": the chosen candidate's mean seconds per training epoch (its steps alone)}, if the curve has them."""
    times = [row["seconds"] for row in curve if row.get("epoch", 0) >= 1 and "seconds" in row]
    return {"epoch_s": round(float(np.mean(times)), 3)} if times else {}

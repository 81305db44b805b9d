"""Learn: search candidates from production on the new batches (Ray tasks in parallel), build the chosen one."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from clreg import __version__, search
from clreg.calibration import calibrate_version
from clreg.context import Context
from learner.models import embed
from learner.replay import memory_to_bytes
from learner.sitebn import bank_from_bytes
from learner.train import TrainConfig
from monitor.features import Reference, fit_reference
from registry.records import Batch, Calibration, Lineage, Model, ModelVersion

Progress = Callable[[int, str, dict[str, float]], None]  # (candidate, site, curve row) as each epoch finishes


def learn(ctx: Context, model: Model, production: ModelVersion | None, batches: list[Batch],
          progress: Progress | None = None, train: TrainConfig | None = None,
          stop: threading.Event | None = None) -> ModelVersion:
    """Search the configured candidates from production on the batches' train splits and build the chosen one
    into a version to register (its artifacts stored; its number is assigned by `register_version`).

    `train` overrides the configured settings for this update (a retry with a stronger penalty); `stop`
    cancels the running training tasks (TrainingInterrupted).
    """
    cfg = train or ctx.train
    started = time.perf_counter()
    parent = tuple(_artifact(ctx, production, name) for name in ("weights", "ewc", "bn_bank"))
    new_ids = [b.id for b in batches]
    new = ctx.split_by_site(model, new_ids, "train")
    memory = search.memory_of(ctx, production)
    data = search.update_data(ctx, new, memory, cfg.seed)
    whole = search.update_data(ctx, new, memory, cfg.seed, carved=False) if ctx.search.refit else None
    found = search.run(ctx, model, production, data, cfg, parent, progress, stop, refit=whole)  # type: ignore[arg-type]
    result = found.chosen.result
    for site, (x, y) in new.items():  # remembered for later updates: all its training samples, where allowed
        if site in data.replayable:
            memory.add(site, x, y, ctx.search.replay_capacity, cfg.seed)
    memory.sites = {s: m for s, m in memory.sites.items() if s in new or search.allows_replay(ctx, s)}
    trained = time.perf_counter()
    earlier_sites = production.lineage.sites if production else []
    sites = earlier_sites + sorted({b.site for b in batches} - set(earlier_sites))
    weights_sha = ctx.artifacts.put(result.weights)
    learnt = ctx.learnt_batches(production) + new_ids
    reference = build_reference(ctx, model, weights_sha, learnt)
    referenced = time.perf_counter()
    bank = result.bn_bank
    calibration = calibrate_version(ctx, model, weights_sha, bank_from_bytes(bank) if bank else None, learnt)
    version = ModelVersion(
        model=model.name,
        number=1,  # a placeholder: the store assigns the real number
        lineage=Lineage(parent=production.number if production else None, batch_ids=new_ids, sites=sites,
                        train_settings={**found.settings.model_dump(), "device": result.device}, seed=cfg.seed,
                        code_version=__version__, search=found.lines,
                        timings={"train_s": round(trained - started, 3),
                                 "fisher_s": round(found.chosen.fisher_seconds, 3), "candidates": len(found.lines),
                                 "reference_s": round(referenced - trained, 3),
                                 "calibration_s": round(time.perf_counter() - referenced, 3)}),
        artifacts={"weights": weights_sha, "ewc": ctx.artifacts.put(result.ewc_state),
                   "reference": ctx.artifacts.put(reference),
                   "calibration": ctx.artifacts.put(calibration.model_dump_json().encode()),
                   **({"bn_bank": ctx.artifacts.put(bank)} if bank is not None else {}),
                   **({"replay": ctx.artifacts.put(memory_to_bytes(memory))} if memory.sites else {})},
        metrics={"final_loss": float(found.chosen.curve[-1]["loss"]) if found.chosen.curve else float("nan"),
                 "validation_accuracy": next(line["score"] for line in found.lines if line["chosen"]),
                 "heldout_ece": _site_mean(calibration, "ece"),
                 "heldout_ece_calibrated": _site_mean(calibration, "ece_calibrated")},
    )
    return version


def _site_mean(calibration: Calibration, figure: str) -> float:
    """Mean over learnt sites of one calibration figure (ECE before, or cross-fitted after, scaling)."""
    return float(np.mean([getattr(s, figure) for s in calibration.sites.values()]))


def _artifact(ctx: Context, version: ModelVersion | None, name: str) -> bytes | None:
    digest = version.artifacts.get(name) if version else None
    return ctx.artifacts.get(digest) if digest else None


def build_reference(ctx: Context, model: Model, weights_sha: str, batch_ids: list[str]) -> bytes:
    """The drift reference of a version: features of (a sample of) the data it learnt, as npz bytes."""
    per_site = ctx.split_by_site(model, batch_ids, "train")
    x = np.concatenate([xy[0] for xy in per_site.values()])
    y = np.concatenate([xy[1] for xy in per_site.values()])
    rng = np.random.default_rng(ctx.train.seed)
    keep = rng.permutation(len(y))[: ctx.trigger.reference_samples]
    net = ctx.module(model, weights_sha)
    ref = fit_reference(embed_fn(net), x[keep], y[keep], ctx.features)
    buf = io.BytesIO()
    arrays: dict[str, Any] = ref.to_arrays()  # numpy's stub would match a value against allow_pickle
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_reference(ctx: Context, version: ModelVersion) -> Reference:
    with np.load(io.BytesIO(ctx.artifacts.get(version.artifacts["reference"])), allow_pickle=False) as npz:
        return Reference.from_arrays({k: npz[k] for k in npz.files})


def embed_fn(net: torch.nn.Module):  # noqa: ANN201 - monitor.features.EmbedFn
    """The monitor's embedding function: penultimate activations of `net` as numpy."""

    def run(x: np.ndarray) -> np.ndarray:
        return embed(net, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run

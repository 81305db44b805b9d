"""Per-site temperature scaling against no scaling and one pooled temperature, on the digits site stream.

The product's default learner (per-site BatchNorm, EWC) learns the 5 sites in order; then, on each site's
held-out set (~109 samples), the final model's logits are scored three ways: temperature 1, one
temperature fitted on every site's held-out data pooled, and one temperature per site (what clreg serves).
Every figure is cross-fitted: each half of a site's held-out set is scored with temperatures fitted on the
other halves only. A site's own temperature is fitted with the pooled one as its prior (learner.calibration).
Reported: ECE (15 bins) and NLL per site, mean ± sd over seeds, plus the fitted temperatures. Accuracy is
the same in all three (scaling never changes a label).
Run: python bench/calibration.py [--seeds N]. Prints a table and writes bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from bench.continual import split  # noqa: E402
from clreg.learner.calibration import out_of_fold_proba, proba_nll, site_temperatures  # noqa: E402
from clreg.learner.evaluate import expected_calibration_error, predict_logits  # noqa: E402
from clreg.learner.ewc import EWCState, state_from_bytes  # noqa: E402
from clreg.learner.models import small_cnn  # noqa: E402
from clreg.learner.sitebn import bank_from_bytes, site_model  # noqa: E402
from clreg.learner.streams import digits_sites  # noqa: E402
from clreg.learner.train import TrainConfig, train_site  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/',
)

METHODS = ("none", "pooled", "per_site")
Scored = dict[str, tuple[np.ndarray, np.ndarray]]  # site -> (held-out logits, labels)


def final_logits(seed: int) -> Scored:
    """Train the default learner on the 5 sites in order; each site's held-out logits under its own BatchNorm."""
    sites = digits_sites(seed)
    data = [split(s, seed) for s in sites]
    torch.manual_seed(seed)
    model, cfg = small_cnn(1, 16, 16, 10), TrainConfig(seed=seed)
    ewc, bank = EWCState(), None
    for site, (train, _) in zip(sites, data, strict=True):
        result = train_site(model, *train, site.name, ewc, cfg, bn_bank=bank)
        ewc, bank = state_from_bytes(result.ewc_state), result.bn_bank
    entries = bank_from_bytes(bank) if bank else {}
    return {s.name: (predict_logits(site_model(model, entries, s.name), x), y)
            for s, (_, (x, y)) in zip(sites, data, strict=True)}


def cross_fitted(scored: Scored, seed: int) -> dict[str, dict[str, Any]]:
    """Per method and site: ECE and NLL of out-of-fold probabilities (clreg's own cross-fitting)."""
    out: dict[str, dict[str, Any]] = {}
    for method, per_site in out_of_fold_proba(scored, folds=2, seed=seed).items():
        for site, proba in per_site.items():
            z, y = scored[site]
            out.setdefault(method, {})[site] = {"ECE": expected_calibration_error(y, proba), "NLL": proba_nll(proba, y),
                                                "accuracy": float((z.argmax(1) == y).mean())}
    pooled, own = site_temperatures(scored)
    for site in scored:
        out["none"][site]["temperature"] = 1.0
        out["pooled"][site]["temperature"] = pooled
        out["per_site"][site]["temperature"] = own[site]
    return out


def summarise(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sd over seeds, per method, per site and for the mean over sites."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        sites = list(runs[0][method])
        for site in [*sites, "mean"]:
            for key in ("ECE", "NLL", "temperature", "accuracy"):
                vals = [np.mean([r[method][s][key] for s in sites]) if site == "mean" else r[method][site][key]
                        for r in runs]
                out.setdefault(method, {}).setdefault(site, {})[key] = float(np.mean(vals))
                out[method][site][f"{key}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def print_table(summary: dict[str, dict[str, dict[str, float]]], seeds: int) -> None:
    table = Table(title=f"Held-out calibration of the final model, cross-fitted, mean ± sd over {seeds} seeds")
    for col in ("site", "accuracy", *(f"ECE {m}" for m in METHODS), *(f"NLL {m}" for m in METHODS), "T per site"):
        table.add_column(col)
    for site in summary["none"]:
        row = summary["none"][site]
        table.add_row(site, f"{row['accuracy']:.3f}",
                      *(f"{summary[m][site]['ECE']:.3f} ± {summary[m][site]['ECE_sd']:.3f}" for m in METHODS),
                      *(f"{summary[m][site]['NLL']:.3f}" for m in METHODS),
                      f"{summary['per_site'][site]['temperature']:.2f}")
    Console(width=170).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    runs = [cross_fitted(final_logits(seed), seed) for seed in range(args.seeds)]
    summary = summarise(runs)
    print_table(summary, args.seeds)
    seconds = time.perf_counter() - started
    settings = {"seeds": args.seeds, "stream": "digits (base, contrast, blur-noise, speckle, inverted)",
                "train": TrainConfig().model_dump(), "folds": 2, "ece_bins": 15,
                "baselines": "none = temperature 1; pooled = one temperature fitted on every site's held-out half"}
    path = write_result("calibration", {"machine": machine_info(), "versions": versions("torch", "numpy", "scipy"),
                                        "settings": settings, "summary": summary, "runs": runs, "seconds": seconds})
    Console().print(f"wrote {path} in {seconds:.0f} s")


if __name__ == "__main__":
    main()

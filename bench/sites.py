"""Per-site validation on the binary stream: calibration, expected-cost thresholds, PPV, accuracy without labels.

The binary stream (learner.streams.binary_sites: "digit >= 5", base 50%, contrast 30%, blur-noise 15%,
speckle 40%, inverted 10% positive) is learnt in order by the default learner (per-site BatchNorm, EWC).
Each site keeps 40% of its images held out, split in two folds; every figure is cross-fitted, so nothing
is reported on the data it was tuned on:
- ECE (15 bins) of the per-site temperature-scaled probabilities (clreg's calibration, cross-fitted);
- the expected-cost threshold (false positive 1, false negative 10, at the site's prevalence) chosen on one
  fold's calibrated scores and priced on the other, against the 0.5 threshold priced on the same fold;
- PPV from learner.operating against PPV from scikit-learn's confusion matrix (must be equal);
- the label-free accuracy estimate (learner.estimate) against the true accuracy, on the held-out fold
  (unshifted traffic) and on two shifted versions of it: a case-mix shift (the half of the images the model
  is least sure of, as when a site starts sending its harder cases; what an image means is unchanged) and
  added pixel noise (a scanner fault; what an image means to the model changes). The alert fires when the
  estimate falls by more than ALERT_DROP below the unshifted estimate.
Run: python bench/sites.py [--seeds N]. Prints a table and writes bench/results/sites.json.
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
from sklearn.metrics import confusion_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from learner.calibration import scaled_proba, site_temperatures  # noqa: E402
from learner.estimate import correct_share, expected_accuracy  # noqa: E402
from learner.evaluate import expected_calibration_error, predict_logits  # noqa: E402
from learner.ewc import EWCState, state_from_bytes  # noqa: E402
from learner.models import small_cnn  # noqa: E402
from learner.operating import Costs, expected_cost, operating_point, threshold_for_cost  # noqa: E402
from learner.sitebn import bank_from_bytes, site_model  # noqa: E402
from learner.streams import BINARY_PREVALENCE, binary_sites, shift  # noqa: E402
from learner.train import TrainConfig, train_site  # noqa: E402

HELDOUT = 0.4
COSTS = Costs(false_positive=1.0, false_negative=10.0)
ALERT_DROP = 0.05  # an estimate this far below the unshifted one raises the alert
SHIFT = {"kind": "noise", "sd": 0.35}  # added pixel noise: the shifted traffic

Arrays = tuple[np.ndarray, np.ndarray]


def train(seed: int) -> tuple[dict[str, Any], dict[str, tuple[Arrays, Arrays]]]:
    """Learn the binary sites in order; per site its network (own BatchNorm) and its two held-out folds."""
    sites = binary_sites(seed)
    torch.manual_seed(seed)
    model, cfg = small_cnn(1, 16, 16, 2), TrainConfig(seed=seed)
    ewc, bank, folds = EWCState(), None, {}
    for site in sites:
        idx = np.random.default_rng(seed).permutation(len(site.y))
        held = idx[: int(HELDOUT * len(idx))]
        tr = idx[len(held):]
        a, b = held[: len(held) // 2], held[len(held) // 2:]
        folds[site.name] = ((site.x[a], site.y[a]), (site.x[b], site.y[b]))
        result = train_site(model, site.x[tr], site.y[tr], site.name, ewc, cfg, bn_bank=bank)
        ewc, bank = state_from_bytes(result.ewc_state), result.bn_bank
    entries = bank_from_bytes(bank) if bank else {}
    return {s.name: site_model(model, entries, s.name) for s in sites}, folds


def seed_figures(nets: dict[str, Any], folds: dict[str, tuple[Arrays, Arrays]], seed: int) -> dict[str, dict]:
    """Every site's cross-fitted figures: each fold tunes (temperatures, as clreg fits them: each site's own
    with the pooled one as its prior; the threshold), the other fold reports."""
    logits = {s: tuple(predict_logits(nets[s], x) for x, _ in folds[s]) for s in nets}
    out: dict[str, dict[str, list[float]]] = {s: {} for s in nets}
    for tune_i, report_i in ((0, 1), (1, 0)):
        _, temperatures = site_temperatures({s: (logits[s][tune_i], folds[s][tune_i][1]) for s in nets})
        for site, net in nets.items():
            (_, ty), (rx, ry) = folds[site][tune_i], folds[site][report_i]
            rows = _direction(net, temperatures[site], logits[site][tune_i], ty, logits[site][report_i], rx, ry,
                              BINARY_PREVALENCE[site], seed)
            for k, v in rows.items():
                out[site].setdefault(k, []).append(v)
    return {s: {k: float(np.nanmean(v)) for k, v in rows.items()} for s, rows in out.items()}


def _direction(net: Any, t: float, tune_logits: np.ndarray, ty: np.ndarray, report_logits: np.ndarray,
               rx: np.ndarray, ry: np.ndarray, prevalence: float, seed: int) -> dict[str, float]:
    tune, report = scaled_proba(tune_logits, t), scaled_proba(report_logits, t)
    noisy = scaled_proba(predict_logits(net, shift(rx, SHIFT["kind"], seed, sd=SHIFT["sd"])), t)
    harder = report.max(axis=1) <= np.median(report.max(axis=1))  # chosen from the images alone, not the labels
    chosen = threshold_for_cost(tune[:, 1], ty, COSTS, prevalence)
    point = operating_point(report[:, 1], ry, chosen)
    tn, fp, fn, tp = confusion_matrix(ry, (report[:, 1] >= chosen).astype(int), labels=[0, 1]).ravel()
    sklearn_ppv = tp / (tp + fp) if tp + fp else float("nan")
    return {
        "ece_calibrated": expected_calibration_error(ry, report),
        "ece_uncalibrated": expected_calibration_error(ry, scaled_proba(report_logits, 1.0)),
        "threshold": chosen,
        "cost_chosen": expected_cost(point, COSTS, prevalence),
        "cost_half": expected_cost(operating_point(report[:, 1], ry, 0.5), COSTS, prevalence),
        "ppv_gap": abs((point.ppv if point.ppv is not None else float("nan")) - sklearn_ppv),
        "accuracy": correct_share(report, ry),
        "estimate": expected_accuracy(report),
        "casemix_accuracy": correct_share(report[harder], ry[harder]),
        "casemix_estimate": expected_accuracy(report[harder]),
        "noise_accuracy": correct_share(noisy, ry),
        "noise_estimate": expected_accuracy(noisy),
    }


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over seeds per site, with the verdicts the issue asks for."""
    out = {}
    for site in runs[0]:
        mean = {k: float(np.mean([r[site][k] for r in runs])) for k in runs[0][site]}
        mean["estimate_error"] = mean["estimate"] - mean["accuracy"]
        for shifted in ("casemix", "noise"):
            mean[f"{shifted}_true_drop"] = mean["accuracy"] - mean[f"{shifted}_accuracy"]
            mean[f"{shifted}_estimated_drop"] = mean["estimate"] - mean[f"{shifted}_estimate"]
            mean[f"{shifted}_alert"] = float(mean[f"{shifted}_estimated_drop"] > ALERT_DROP)
        mean["prevalence"] = BINARY_PREVALENCE[site]
        out[site] = mean
    return out


def print_table(summary: dict[str, dict[str, float]], seeds: int) -> None:
    table = Table(title=f"binary stream, per site, cross-fitted, mean over {seeds} seeds")
    for col in ("site", "prevalence", "ECE before", "ECE after", "cost thr.", "cost @ thr.", "cost @ 0.5",
                "PPV gap", "accuracy / est.", "case mix: acc. / est.", "alert", "noise: acc. / est.", "alert"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for site, r in summary.items():
        table.add_row(site, f"{r['prevalence']:.2f}", f"{r['ece_uncalibrated']:.3f}", f"{r['ece_calibrated']:.3f}",
                      f"{r['threshold']:.2f}", f"{r['cost_chosen']:.3f}", f"{r['cost_half']:.3f}",
                      f"{r['ppv_gap']:.0e}", f"{r['accuracy']:.3f} / {r['estimate']:.3f}",
                      f"{r['casemix_accuracy']:.3f} / {r['casemix_estimate']:.3f}",
                      "yes" if r["casemix_alert"] else "no",
                      f"{r['noise_accuracy']:.3f} / {r['noise_estimate']:.3f}", "yes" if r["noise_alert"] else "no")
    Console(width=180).print(table)


def verdicts(summary: dict[str, dict[str, float]]) -> dict[str, bool]:
    sites = summary.values()
    return {
        "ece<=0.05_every_site": all(r["ece_calibrated"] <= 0.05 for r in sites),
        "cost_threshold<=half_every_site": all(r["cost_chosen"] <= r["cost_half"] + 1e-12 for r in sites),
        "ppv_equals_confusion_matrix": all(r["ppv_gap"] < 1e-12 for r in sites),
        "estimate_within_3_points": all(abs(r["estimate_error"]) <= 0.03 for r in sites),
        "casemix_alert_on_every_drop>=10_points": all(r["casemix_alert"] for r in sites
                                                      if r["casemix_true_drop"] >= 0.10),
        "noise_alert_on_every_drop>=10_points": all(r["noise_alert"] for r in sites if r["noise_true_drop"] >= 0.10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        nets, folds = train(seed)
        runs.append(seed_figures(nets, folds, seed))
    summary = summarise(runs)
    print_table(summary, args.seeds)
    checks = verdicts(summary)
    Console().print(checks)
    seconds = time.perf_counter() - started
    settings = {"seeds": args.seeds, "stream": "binary_sites (digit >= 5)", "prevalence": BINARY_PREVALENCE,
                "heldout": HELDOUT, "folds": 2, "costs": {"false_positive": COSTS.false_positive,
                                                          "false_negative": COSTS.false_negative},
                "alert_drop": ALERT_DROP, "shift": SHIFT, "train": TrainConfig().model_dump(), "ece_bins": 15}
    path = write_result("sites", {"machine": machine_info(), "versions": versions("torch", "numpy", "scikit-learn"),
                                  "settings": settings, "summary": summary, "verdicts": checks, "runs": runs,
                                  "seconds": seconds})
    Console().print(f"wrote {path} in {seconds:.0f} s")


if __name__ == "__main__":
    main()

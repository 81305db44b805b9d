"""Per-site validation on the binary stream: calibration, expected-cost thresholds, PPV, accuracy without labels.

The binary stream (learner.streams.binary_sites: "digit >= 5", base 50%, contrast 30%, blur-noise 15%,
speckle 40%, inverted 10% positive) is learnt in order by the default learner (per-site BatchNorm, EWC).
Each site keeps 40% of its images held out (80 to 145 images); every figure is cross-fitted, so nothing
is reported on the data it was tuned on:
- calibration exactly as clreg records it for a version (learner.calibration.calibrate_sites on the site's
  whole held-out set: per-site temperatures, 10-fold cross-fitted): ECE (15 bins) beside the ECE a perfectly
  calibrated model would show on the same samples (its noise floor) and the debiased calibration error
  (learner.evaluate: unbiased squared gap over 10 equal-mass bins), averaged over CALIBRATION_SEEDS seeds
  and then the root, with a 95% bootstrap interval over seeds; the verdict uses it. One seed's figure rests
  on ~100 images, so it takes many seeds to resolve 0.05;
- the rest on the first --seeds seeds, the held-out set split in two folds, each fold tuning and the other
  reporting:
- the expected-cost threshold (false positive 1, false negative 10, at the site's prevalence) chosen on one
  fold's calibrated scores and priced on the other, against the 0.5 threshold priced on the same fold;
- PPV from clreg.learner.operating against PPV from scikit-learn's confusion matrix (must be equal);
- the label-free accuracy estimate (learner.estimate) against the true accuracy, on the held-out fold
  (unshifted traffic) and on two shifted versions of it: a case-mix shift (the third of the images the model
  is least sure of, as when a site starts sending its harder cases; what an image means is unchanged) and
  added pixel noise (a scanner fault; what an image means to the model changes). The alert fires when the
  estimate falls by more than ALERT_DROP below the unshifted estimate. Beside it, the input watch's drift
  check (monitor: Evidently column tests and embedding MMD against the site's training images, as
  clreg's watch runs it) on the same three sets, the alert ops get when the estimate cannot see a shift;
- the checked estimate (learner.estimate.checked_accuracy, what clreg's watch records per site) on the same
  three sets: each answer also given by the network with the window's own BatchNorm statistics (AdaBN) and
  credited with the lower of the two views' confidence in it, an answer that flips with nothing (chosen among
  four variants on seeds 100 to 119, not on these).
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
from clreg.learner.calibration import CROSS_FOLDS, calibrate_sites, scaled_proba, site_temperatures  # noqa: E402
from clreg.learner.estimate import checked_accuracy, correct_share, expected_accuracy, two_views  # noqa: E402
from clreg.learner.evaluate import predict_logits, squared_calibration_error  # noqa: E402
from clreg.learner.ewc import EWCState, state_from_bytes  # noqa: E402
from clreg.learner.models import small_cnn  # noqa: E402
from clreg.learner.operating import Costs, expected_cost, operating_point, threshold_for_cost  # noqa: E402
from clreg.learner.sitebn import bank_from_bytes, site_model  # noqa: E402
from clreg.learner.streams import BINARY_PREVALENCE, binary_sites, shift  # noqa: E402
from clreg.learner.train import TrainConfig, train_site  # noqa: E402
from clreg.monitor.drift import DriftConfig, check_drift  # noqa: E402
from clreg.monitor.features import FeatureConfig, Reference, batch_features, fit_reference  # noqa: E402
from clreg.reference import embed_fn  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/',
    'clreg/calibration.py',
    'registry/readiness.py',
)

HELDOUT = 0.4
COSTS = Costs(false_positive=1.0, false_negative=10.0)
ALERT_DROP = 0.05  # an estimate this far below the unshifted one raises the alert
SHIFT = {"kind": "noise", "sd": 0.35}  # added pixel noise: the shifted traffic
CASEMIX_SHARE = 1 / 3  # the case-mix shift keeps this share of the images the model is least sure of
CALIBRATION_SEEDS = 100  # decided before the run: the 20-seed interval at a site was 0.04 to 0.10 wide

Arrays = tuple[np.ndarray, np.ndarray]


def train(seed: int) -> tuple[dict[str, Any], dict[str, tuple[Arrays, Arrays]], dict[str, Reference]]:
    """Learn the binary sites in order; per site its network (own BatchNorm), its two held-out folds and the
    drift reference of its training images (under the final network, as a version's reference is built)."""
    sites = binary_sites(seed)
    torch.manual_seed(seed)
    model, cfg = small_cnn(1, 16, 16, 2), TrainConfig(seed=seed)
    ewc, bank, folds, learnt = EWCState(), None, {}, {}
    for site in sites:
        idx = np.random.default_rng(seed).permutation(len(site.y))
        held = idx[: int(HELDOUT * len(idx))]
        tr = idx[len(held):]
        a, b = held[: len(held) // 2], held[len(held) // 2:]
        folds[site.name] = ((site.x[a], site.y[a]), (site.x[b], site.y[b]))
        learnt[site.name] = (site.x[tr], site.y[tr])
        result = train_site(model, site.x[tr], site.y[tr], site.name, ewc, cfg, bn_bank=bank)
        ewc, bank = state_from_bytes(result.ewc_state), result.bn_bank
    entries = bank_from_bytes(bank) if bank else {}
    nets = {s.name: site_model(model, entries, s.name) for s in sites}
    refs = {s: fit_reference(embed_fn(nets[s]), x, y, FeatureConfig(seed=seed)) for s, (x, y) in learnt.items()}
    return nets, folds, refs


def drifted(net: Any, ref: Reference, x: np.ndarray, seed: int) -> float:
    """1.0 when the watch's drift check flags these images against the site's reference, else 0.0."""
    current = batch_features(embed_fn(net), ref, x, None)
    check = check_drift(ref, current, report_id="bench", model="bench", site="site", batch_id="b" * 64,
                        cfg=DriftConfig(seed=seed), render=False)
    return float(check.findings.drift)


def seed_figures(nets: dict[str, Any], folds: dict[str, tuple[Arrays, Arrays]], refs: dict[str, Reference],
                 seed: int) -> dict[str, dict]:
    """Every site's cross-fitted figures: each fold tunes (temperatures, as clreg fits them: each site's own
    with the pooled one as its prior; the threshold), the other fold reports."""
    logits = {s: tuple(predict_logits(nets[s], x) for x, _ in folds[s]) for s in nets}
    out: dict[str, dict[str, list[float]]] = {s: {} for s in nets}
    for tune_i, report_i in ((0, 1), (1, 0)):
        _, temperatures = site_temperatures({s: (logits[s][tune_i], folds[s][tune_i][1]) for s in nets})
        for site, net in nets.items():
            (_, ty), (rx, ry) = folds[site][tune_i], folds[site][report_i]
            rows = _direction(net, refs[site], temperatures[site], logits[site][tune_i], ty,
                              logits[site][report_i], rx, ry, BINARY_PREVALENCE[site], seed)

            for k, v in rows.items():
                out[site].setdefault(k, []).append(v)
    return {s: {k: float(np.nanmean(v)) for k, v in rows.items()} for s, rows in out.items()}


def _direction(net: Any, ref: Reference, t: float, tune_logits: np.ndarray, ty: np.ndarray,
               report_logits: np.ndarray, rx: np.ndarray, ry: np.ndarray, prevalence: float,
               seed: int) -> dict[str, float]:
    tune, report = scaled_proba(tune_logits, t), scaled_proba(report_logits, t)
    noisy_x = shift(rx, SHIFT["kind"], seed, sd=SHIFT["sd"])
    noisy = scaled_proba(predict_logits(net, noisy_x), t)
    # chosen from the images alone, not the labels
    harder = report.max(axis=1) <= np.quantile(report.max(axis=1), CASEMIX_SHARE)
    chosen = threshold_for_cost(tune[:, 1], ty, COSTS, prevalence)
    point = operating_point(report[:, 1], ry, chosen)
    tn, fp, fn, tp = confusion_matrix(ry, (report[:, 1] >= chosen).astype(int), labels=[0, 1]).ravel()
    sklearn_ppv = tp / (tp + fp) if tp + fp else float("nan")
    return {
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
        "checked": _checked(net, rx, t),
        "casemix_checked": _checked(net, rx[harder], t),
        "noise_checked": _checked(net, noisy_x, t),
        "unshifted_drift": drifted(net, ref, rx, seed),
        "casemix_drift": drifted(net, ref, rx[harder], seed),
        "noise_drift": drifted(net, ref, noisy_x, seed),
    }


def calibration(nets: dict[str, Any], folds: dict[str, tuple[Arrays, Arrays]], seed: int) -> dict[str, dict]:
    """Each site's calibration figures as clreg records them for a version, on the whole held-out set."""
    scored = {s: (np.concatenate([predict_logits(nets[s], x) for x, _ in folds[s]]),
                  np.concatenate([y for _, y in folds[s]])) for s in nets}
    _, fits = calibrate_sites(scored, seed=seed)
    rng = np.random.default_rng(seed)
    return {s: {"squared_error": squared_calibration_error(scored[s][1], fit.out_of_fold),
                **_squared_floor(fit.out_of_fold, rng),
                "ece_calibrated": fit.ece_calibrated, "ece_uncalibrated": fit.ece, "ece_floor": fit.ece_floor,
                "temperature": fit.temperature, "samples": fit.samples} for s, fit in fits.items()}


def _squared_floor(proba: np.ndarray, rng: np.random.Generator, draws: int = 50) -> dict[str, float]:
    """The debiased squared error on labels drawn from the probabilities themselves (perfect calibration): its
    mean (the estimator's own bias on these confidences, which the verdict's figure is checked against) and its
    variance (the noise a perfectly calibrated model's figure shows on as many samples)."""
    values = [squared_calibration_error((rng.random(len(proba)) < proba[:, 1]).astype(int), proba)
              for _ in range(draws)]
    return {"squared_error_floor": float(np.mean(values)), "squared_error_floor_var": float(np.var(values, ddof=1))}


def summarise_calibration(runs: list[dict[str, dict[str, float]]], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per site: mean figures over seeds, the root of the mean squared error and its 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    out = {}
    for site in runs[0]:
        squared = np.array([r[site]["squared_error"] for r in runs])
        means = squared[rng.integers(0, len(squared), (2000, len(squared)))].mean(axis=1)
        low, high = np.sqrt(np.clip(np.quantile(means, [0.025, 0.975]), 0.0, None))
        mean = {k: float(np.mean([r[site][k] for r in runs])) for k in runs[0][site]}
        corrected = mean["squared_error"] - mean["squared_error_floor"]
        # what the mean over these seeds of a perfectly calibrated model's figure reaches at most (97.5%): an
        # estimate under it cannot be told from perfect calibration, so the page prints it as "<= floor"
        limit = mean["squared_error_floor"] + 1.96 * np.sqrt(mean["squared_error_floor_var"] / len(runs))
        out[site] = {**mean, "calibration_error": float(np.sqrt(max(mean["squared_error"], 0.0))),
                     "calibration_error_floor": float(np.sqrt(max(limit, 0.0))),
                     "calibration_error_bias_corrected": float(np.sqrt(max(corrected, 0.0))),
                     "calibration_error_low": float(low), "calibration_error_high": float(high),
                     "calibration_seeds": len(runs)}
    return out


def _checked(net: Any, x: np.ndarray, t: float) -> float:
    """The checked estimate on a window of traffic (the served view and the window's own BatchNorm statistics)."""
    return checked_accuracy(*two_views(net, x, t))


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over seeds per site, with the verdicts the issue asks for."""
    out = {}
    for site in runs[0]:
        mean = {k: float(np.mean([r[site][k] for r in runs])) for k in runs[0][site]}
        mean["estimate_error"] = mean["estimate"] - mean["accuracy"]
        mean["checked_error"] = mean["checked"] - mean["accuracy"]
        for shifted in ("casemix", "noise"):
            mean[f"{shifted}_true_drop"] = mean["accuracy"] - mean[f"{shifted}_accuracy"]
            mean[f"{shifted}_estimated_drop"] = mean["estimate"] - mean[f"{shifted}_estimate"]
            mean[f"{shifted}_alert"] = float(mean[f"{shifted}_estimated_drop"] > ALERT_DROP)
            mean[f"{shifted}_checked_drop"] = mean["checked"] - mean[f"{shifted}_checked"]
            mean[f"{shifted}_checked_alert"] = float(mean[f"{shifted}_checked_drop"] > ALERT_DROP)
        mean["prevalence"] = BINARY_PREVALENCE[site]
        out[site] = mean
    return out


def print_table(summary: dict[str, dict[str, float]], seeds: int, calibration_seeds: int) -> None:
    table = Table(title=f"binary stream, per site, cross-fitted; calibration over {calibration_seeds} seeds, "
                        f"the rest over {seeds}")
    for col in ("site", "prev.", "ECE before", "ECE after", "ECE floor", "cal. error", "thr.", "cost @ thr.",
                "cost @ 0.5", "PPV gap", "acc. / est. / checked", "drift", "case mix: acc. / est. / checked",
                "alerts est., checked / drift", "noise: acc. / est. / checked", "alerts est., checked / drift"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for site, r in summary.items():
        table.add_row(site, f"{r['prevalence']:.2f}", f"{r['ece_uncalibrated']:.3f}", f"{r['ece_calibrated']:.3f}",
                      f"{r['ece_floor']:.3f}", f"{r['calibration_error']:.3f} ({r['calibration_error_low']:.3f}-"
                      f"{r['calibration_error_high']:.3f})",
                      f"{r['threshold']:.2f}", f"{r['cost_chosen']:.3f}", f"{r['cost_half']:.3f}",
                      f"{r['ppv_gap']:.0e}", f"{r['accuracy']:.3f} / {r['estimate']:.3f} / {r['checked']:.3f}",
                      f"{r['unshifted_drift']:.0%}", *_shifted(r, "casemix"), *_shifted(r, "noise"))
    Console(width=200).print(table)


def _shifted(r: dict[str, float], kind: str) -> tuple[str, str]:
    return (f"{r[f'{kind}_accuracy']:.3f} / {r[f'{kind}_estimate']:.3f} / {r[f'{kind}_checked']:.3f}",
            f"{_yes(r[f'{kind}_alert'])}, {_yes(r[f'{kind}_checked_alert'])} / {r[f'{kind}_drift']:.0%}")


def _yes(flag: float) -> str:
    return "yes" if flag else "no"


def verdicts(summary: dict[str, dict[str, float]]) -> dict[str, bool]:
    sites = summary.values()
    furthest = sorted(summary, key=lambda s: -abs(summary[s]["prevalence"] - 0.5))[:2]
    return {
        "calibration_error<=0.05_every_site": all(r["calibration_error"] <= 0.05 for r in sites),
        "calibration_error_bias_corrected<=0.05_every_site": all(r["calibration_error_bias_corrected"] <= 0.05
                                                                  for r in sites),
        "calibration_error_95%_upper<=0.05_every_site": all(r["calibration_error_high"] <= 0.05 for r in sites),
        "ece<=0.05_every_site (binned, noise floor included)": all(r["ece_calibrated"] <= 0.05 for r in sites),
        "cost_threshold<=half_every_site": all(r["cost_chosen"] <= r["cost_half"] + 1e-12 for r in sites),
        "cost_threshold<half_where_prevalence_differs_most": all(summary[s]["cost_chosen"] < summary[s]["cost_half"]
                                                                 for s in furthest),
        "ppv_equals_confusion_matrix": all(r["ppv_gap"] < 1e-12 for r in sites),
        "estimate_within_3_points": all(abs(r["estimate_error"]) <= 0.03 for r in sites),
        "casemix_alert_on_every_drop>=10_points": all(r["casemix_alert"] for r in sites
                                                      if r["casemix_true_drop"] >= 0.10),
        "noise_alert_on_every_drop>=10_points": all(r["noise_alert"] for r in sites if r["noise_true_drop"] >= 0.10),
        "checked_estimate_within_3_points": all(abs(r["checked_error"]) <= 0.03 for r in sites),
        "checked_alert_on_every_drop>=10_points (both shifts)": all(
            r[f"{k}_checked_alert"] for r in sites for k in ("casemix", "noise") if r[f"{k}_true_drop"] >= 0.10),
        "noise_drift_alert_on_every_drop>=10_points": all(r["noise_drift"] >= 0.5 for r in sites
                                                          if r["noise_true_drop"] >= 0.10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--calibration-seeds", type=int, default=CALIBRATION_SEEDS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    runs, calibrations = [], []
    for seed in range(max(args.seeds, args.calibration_seeds)):
        nets, folds, refs = train(seed)
        if seed < args.calibration_seeds:
            calibrations.append(calibration(nets, folds, seed))
        if seed < args.seeds:
            runs.append(seed_figures(nets, folds, refs, seed))
    calibrated = summarise_calibration(calibrations)
    summary = {s: {**figures, **calibrated[s]} for s, figures in summarise(runs).items()}
    print_table(summary, args.seeds, args.calibration_seeds)
    checks = verdicts(summary)
    Console().print(checks)
    seconds = time.perf_counter() - started
    settings = {"seeds": args.seeds, "calibration_seeds": args.calibration_seeds,
                "stream": "binary_sites (digit >= 5)", "prevalence": BINARY_PREVALENCE,
                "heldout": HELDOUT, "folds": 2, "calibration_folds": CROSS_FOLDS,
                "costs": {"false_positive": COSTS.false_positive, "false_negative": COSTS.false_negative},
                "alert_drop": ALERT_DROP, "shift": SHIFT, "casemix_share": CASEMIX_SHARE,
                "train": TrainConfig().model_dump(), "ece_bins": 15,
                "calibration_error": "debiased squared, 10 equal-mass bins, of clreg's 10-fold cross-fitted "
                                     "per-site temperatures on the whole held-out set, mean over seeds, root; "
                                     "95% bootstrap interval over seeds",
                "drift": DriftConfig().model_dump()}
    path = write_result("sites", {"machine": machine_info(), "versions": versions("torch", "numpy", "scikit-learn"),
                                  "settings": settings, "summary": summary, "verdicts": checks, "runs": runs,
                                  "calibration_runs": calibrations,
                                  "seconds": seconds})
    Console().print(f"wrote {path} in {seconds:.0f} s")


if __name__ == "__main__":
    main()

"""Continual learning through the product's own update path: each site's batch goes through
`clreg.pipeline.process` (drift check, candidate search as Ray tasks, register, gate, promote), exactly as
the daemon runs it, on a real Redis-compatible server and a local Ray; the served version after each site
is scored on every site's test images, which the registry never saw.

Methods differ only in the candidates the search tries (everything else is the product's default):
  product  the default candidates (lambda, rehearsal, epochs), chosen per update on validation data
  ewc      one candidate: EWC at lambda 3e3 without rehearsal (the default before rehearsal existed)
  replay   one candidate: rehearsal only (lambda 0)
  naive    one candidate: fine-tuning (lambda 0, no rehearsal)
and joint training (one model on every site's training images at once, shared BatchNorm, 3,000 steps) is the
bar.
Streams: digits (5 scanner shifts), permuted (5 pixel permutations), harsh (chained strong shifts).
Reporting seeds (default 0-4) are never used to choose anything: the default candidates were chosen with
`--seeds-from 100 --seeds 2` (selection seeds), and each update chooses among them on validation data carved
from its own training data.
Run: python bench/continual.py [--seeds N --seeds-from S --streams a,b --methods a,b --name NAME].
Prints tables and writes bench/results/continual.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg import context, embedded, pipeline  # noqa: E402
from clreg.client import npz_bytes  # noqa: E402
from clreg.home import Home  # noqa: E402
from clreg.learner.evaluate import continual_summary, site_metrics  # noqa: E402
from clreg.learner.ewc import EWCState  # noqa: E402
from clreg.learner.joint import train_joint  # noqa: E402
from clreg.learner.models import small_cnn  # noqa: E402
from clreg.learner.sitebn import route  # noqa: E402
from clreg.learner.streams import SiteData, digits_sites, harsh_sites, permuted_pixels_stream, to_uint8  # noqa: E402
from clreg.learner.train import TrainConfig, train_site  # noqa: E402
from clreg.registry.batches import Limits, ingest  # noqa: E402
from clreg.registry.connection import StoreConfig  # noqa: E402
from clreg.registry.events import IngestQueue  # noqa: E402
from clreg.registry.records import InputSpec, Model, ModelVersion  # noqa: E402
from clreg.settings import DEFAULT_CANDIDATES, RaySettings, RedisSettings, SearchConfig, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/',
    'clreg/',
    'registry/gates.py',
    'monitor/',
)

STREAMS = ("digits", "permuted", "harsh")
METHODS: dict[str, list[dict[str, Any]]] = {
    "product": [dict(c) for c in DEFAULT_CANDIDATES],
    "ewc": [{"ewc_lambda": 3000.0, "replay_weight": 0.0}],
    "replay": [{"ewc_lambda": 0.0}],
    "naive": [{"ewc_lambda": 0.0, "replay_weight": 0.0}],
}
TRAIN_PER_SITE = 250  # pushed as the site's batch; the rest of the site (~110 images) is its test set
SPEC = InputSpec(channels=1, height=16, width=16, classes=10)


def sites_of(stream: str, seed: int) -> list[SiteData]:
    if stream == "digits":
        return digits_sites(seed)
    return permuted_pixels_stream(5, seed) if stream == "permuted" else harsh_sites(seed)


def split(site: SiteData, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    idx = np.random.default_rng(seed).permutation(len(site.y))
    tr, te = idx[:TRAIN_PER_SITE], idx[TRAIN_PER_SITE:]
    return (site.x[tr], site.y[tr]), (site.x[te], site.y[te])


def served_accuracy(ctx: context.Context, tests: list[tuple[str, tuple[np.ndarray, np.ndarray]]],
                    version: ModelVersion | None = None) -> list[float]:
    """Accuracy of the production version (or `version`) on each site's test images, each site answered with its
    own BatchNorm when the version has learnt it (MAP routing otherwise), as /v1/predict answers a named site."""
    version = version or ctx.stores.production("m")
    if version is None:
        return [0.1] * len(tests)  # nothing served yet: chance
    net, bank = ctx.stores.module(ctx.registry.get_model("m"), version.artifacts["weights"]), ctx.stores.bank(version)
    out = []
    for site, (x, y) in tests:
        site_bn = None
        if bank:
            site_bn = bank[site] if site in bank else bank[route(net, bank, torch.from_numpy(x))]
        out.append(site_metrics(net, x, y, site_bn=site_bn).accuracy)
    return out


def run_sequence(store: StoreConfig, home: Path, stream: str, method: str, seed: int) -> dict[str, Any]:
    """Push the stream's sites in order through the pipeline; the accuracy matrix of the served versions."""
    prefix = f"cl-{stream}-{method}-{seed}"
    settings = Settings(home=home, redis=RedisSettings(url=store.url, prefix=prefix),
                        train=TrainConfig(seed=seed), search=SearchConfig(candidates=METHODS[method]))
    cfg = StoreConfig(url=store.url, prefix=prefix)
    ctx = context.build(settings, cfg, "http://127.0.0.1:0")
    ctx.registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    queue = IngestQueue(ctx.registry)
    queue.ensure_group()
    sites = sites_of(stream, seed)
    data = [(s.name, split(s, seed)) for s in sites]
    tests = [(name, test) for name, (_, test) in data]
    R, C = np.zeros((len(sites), len(sites))), np.zeros((len(sites), len(sites)))
    seconds, train_seconds, verdicts = [], [], []
    for i, (name, ((x, y), _)) in enumerate(data):
        batch, _ = ingest(ctx.registry, ctx.artifacts, queue, ctx.events, "m", name, npz_bytes(to_uint8(x), y),
                          Limits())
        started = time.perf_counter()
        pipeline.process(ctx, pipeline.Worker(), batch.id)
        seconds.append(time.perf_counter() - started)
        newest = ctx.registry.list_versions("m")[-1].version
        train_seconds.append(newest.lineage.timings["train_s"])  # the candidate search alone (K Ray tasks)
        verdicts.append(ctx.registry.batches.state(batch.id).status.value)
        R[i] = served_accuracy(ctx, tests)
        C[i] = served_accuracy(ctx, tests, newest)  # the update's last candidate, before its gate
    return {**continual_summary(R), "R": R.tolist(), "per_site_final": R[-1].tolist(), "verdicts": verdicts,
            "update_seconds": seconds, "train_seconds": train_seconds,
            "candidates": len(METHODS[method]), "C": C.tolist(),
            "candidate": {f"{k}": v for k, v in continual_summary(C).items()}}


JOINT_STEPS = 3000  # joint training's step budget, chosen on the selection seeds from {0, 600, 1500, 3000}
# Joint training with per-site BatchNorm (the bar), and cumulative retraining with it: steps chosen on the
# selection seeds (--seeds-from 100) from this grid by validation accuracy (a fifth of each site's training data).
SITE_JOINT_GRID = (1500, 3000, 6000)
SITE_JOINT_STEPS = 3000


def run_joint(stream: str, seed: int) -> dict[str, Any]:
    """One model on every site's training images at once (BatchNorm shared and updated): the old bar."""
    data = [split(s, seed) for s in sites_of(stream, seed)]
    torch.manual_seed(seed)
    model = small_cnn(1, 16, 16, 10)
    x = np.concatenate([d[0][0] for d in data])
    y = np.concatenate([d[0][1] for d in data])
    train_site(model, x, y, "joint", EWCState(), TrainConfig(bn_policy="update", ewc_lambda=0.0, seed=seed,
                                                             min_steps=JOINT_STEPS))
    per_site = [site_metrics(model, *d[1]).accuracy for d in data]
    return {"ACC": float(np.mean(per_site)), "per_site_final": per_site}


def _site_joint(train: dict[str, tuple[np.ndarray, np.ndarray]], steps: int, seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = small_cnn(1, 16, 16, 10)
    return model, train_joint(model, train, steps=steps, seed=seed)


def _routed_accuracy(model: Any, bank: Any, site: str, x: np.ndarray, y: np.ndarray) -> float:
    """As a named site is served: its own BatchNorm where trained, MAP routing otherwise."""
    site_bn = bank[site] if site in bank else bank[route(model, bank, torch.from_numpy(x))]
    return site_metrics(model, x, y, site_bn=site_bn).accuracy


def select_site_joint_steps(stream: str, seed: int) -> dict[int, float]:
    """Validation accuracy of joint training with per-site BatchNorm for each step budget of the grid (run on
    selection seeds only): a fifth of each site's training data held apart, the tests untouched."""
    data = {s.name: split(s, seed)[0] for s in sites_of(stream, seed)}
    fit = {n: (x[: len(y) * 4 // 5], y[: len(y) * 4 // 5]) for n, (x, y) in data.items()}
    val = {n: (x[len(y) * 4 // 5 :], y[len(y) * 4 // 5 :]) for n, (x, y) in data.items()}
    out = {}
    for steps in SITE_JOINT_GRID:
        model, bank = _site_joint(fit, steps, seed)
        out[steps] = float(np.mean([_routed_accuracy(model, bank, n, *val[n]) for n in val]))
    return out


def run_site_joint(stream: str, seed: int) -> dict[str, Any]:
    """The bar: joint training with per-site BatchNorm and the site known, as clreg serves (learner.joint)."""
    sites = sites_of(stream, seed)
    train = {s.name: split(s, seed)[0] for s in sites}
    model, bank = _site_joint(train, SITE_JOINT_STEPS, seed)
    per_site = [_routed_accuracy(model, bank, s.name, *split(s, seed)[1]) for s in sites]
    return {"ACC": float(np.mean(per_site)), "per_site_final": per_site}


def run_cumulative(stream: str, seed: int) -> dict[str, Any]:
    """Cumulative retraining: at each update, a model from the initial weights on every site's training data
    stored so far (joint with per-site BatchNorm, the same budget per update as the bar); its accuracy matrix
    and seconds per update."""
    sites = sites_of(stream, seed)
    tests = [split(s, seed)[1] for s in sites]
    R = np.zeros((len(sites), len(sites)))
    seconds = []
    for i in range(len(sites)):
        started = time.perf_counter()
        model, bank = _site_joint({s.name: split(s, seed)[0] for s in sites[: i + 1]}, SITE_JOINT_STEPS, seed)
        seconds.append(time.perf_counter() - started)
        R[i] = [_routed_accuracy(model, bank, s.name, *t) for s, t in zip(sites, tests, strict=True)]
    return {**continual_summary(R), "R": R.tolist(), "per_site_final": R[-1].tolist(), "update_seconds": seconds,
            "train_seconds": seconds, "candidates": 1}


def bars(row: dict[str, Any], joint: dict[str, Any]) -> dict[str, Any]:
    """The issue's bars for one method on one stream, from means over seeds."""
    acc, bwt = row["ACC"]["mean"], row["BWT"]["mean"]
    ratios = [a / j for a, j in zip(row["per_site_final_mean"], joint["per_site_final_mean"], strict=True)]
    return {"ACC_vs_joint": acc / joint["ACC"]["mean"], "ACC_bar": acc >= 0.9 * joint["ACC"]["mean"],
            "worst_site_vs_joint": min(ratios), "sites_bar": min(ratios) >= 0.8, "BWT": bwt, "BWT_bar": bwt >= -0.02}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for key in ("ACC", "BWT", "forgetting"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    out["per_site_final_mean"] = np.mean([r["per_site_final"] for r in runs], axis=0).tolist()
    if runs and "candidate" in runs[0]:  # before the gate: what the search produced, forgetting included
        out["candidate_BWT"] = float(np.mean([r["candidate"]["BWT"] for r in runs]))
        out["candidate_forgetting"] = float(np.mean([r["candidate"]["forgetting"] for r in runs]))
    if runs and "update_seconds" in runs[0]:
        out["update_seconds_mean"] = float(np.mean([s for r in runs for s in r["update_seconds"]]))
        out["train_seconds_mean"] = float(np.mean([s for r in runs for s in r["train_seconds"]]))
        out["candidates"] = runs[0]["candidates"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seeds-from", type=int, default=0, help="first seed (selection runs: 100)")
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--name", default="continual")
    parser.add_argument("--select", action="store_true", help="selection seeds: validation accuracy of the joint "
                        "bar's step budgets (SITE_JOINT_GRID), nothing else")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = list(range(args.seeds_from, args.seeds_from + args.seeds))
    streams, methods = args.streams.split(","), args.methods.split(",")
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    selection: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        home.create()
        valkey = embedded.start_valkey(home, home.secrets()["valkey"], [])
        embedded.start_ray(RaySettings(num_cpus=2))
        try:
            for stream in streams:
                if args.select:  # selection seeds only: the joint bar's step budget, the record kept
                    selection[stream] = {seed: select_site_joint_steps(stream, seed) for seed in seeds}
                    print(f"{stream}: {selection[stream]}", file=sys.stderr, flush=True)
                    continue
                rows = {"joint, per-site BatchNorm": summarise([run_site_joint(stream, s) for s in seeds]),
                        "joint, shared BatchNorm": summarise([run_joint(stream, s) for s in seeds]),
                        "cumulative retraining": summarise([run_cumulative(stream, s) for s in seeds])}
                bar = rows["joint, per-site BatchNorm"]
                for name in ("joint, shared BatchNorm", "cumulative retraining"):
                    rows[name]["bars"] = bars(rows[name], bar)
                for method in methods:
                    runs = []
                    for seed in seeds:
                        runs.append(run_sequence(StoreConfig(url=valkey.url), home.path, stream, method, seed))
                        print(f"{stream} {method} seed {seed}: ACC {runs[-1]['ACC']:.3f} BWT {runs[-1]['BWT']:+.3f} "
                              f"{runs[-1]['verdicts']}", file=sys.stderr, flush=True)
                    rows[method] = summarise(runs)
                    rows[method]["bars"] = bars(rows[method], bar)
                results[stream] = rows
        finally:
            valkey.stop()
    print_tables(results, seeds)
    total = time.perf_counter() - started
    path = write_result(args.name, {"machine": machine_info(), "versions": versions("torch", "ray", "evidently"),
                                     "seeds": seeds, "streams": streams, "methods": {m: METHODS[m] for m in methods},
                                     "train_per_site": TRAIN_PER_SITE, "results": results, "total_s": total,
                                     "site_joint_steps": SITE_JOINT_STEPS, "site_joint_selection": selection})
    print(f"wrote {path} in {total:.0f} s")


def print_tables(results: dict[str, dict[str, Any]], seeds: list[int]) -> None:
    console = Console(width=160)
    for stream, rows in results.items():
        table = Table(title=f"{stream}: served accuracy after all 5 sites, mean over seeds {seeds}; x joint: against "
                      "joint training with per-site BatchNorm")
        for col in ("method", "ACC", "BWT", "candidates' BWT / forgetting", "x joint", "worst site x its joint",
                    "per site", "K", "search s", "s / update", "bars"):
            table.add_column(col)
        for name, r in rows.items():
            b = r.get("bars", {})
            cand = r.get("candidate_BWT")
            table.add_row(name, f"{r['ACC']['mean']:.3f} ± {r['ACC']['sd']:.3f}",
                          f"{r['BWT']['mean']:+.3f}" if "BWT" in r else "-",
                          f"{cand:+.3f} / {r['candidate_forgetting']:.3f}" if cand is not None else "-",
                          f"{b['ACC_vs_joint']:.2f}" if b else "-", f"{b['worst_site_vs_joint']:.2f}" if b else "-",
                          " ".join(f"{a:.2f}" for a in r["per_site_final_mean"]), str(r.get("candidates", "-")),
                          f"{r['train_seconds_mean']:.1f}" if "train_seconds_mean" in r else "-",
                          f"{r['update_seconds_mean']:.1f}" if "update_seconds_mean" in r else "-",
                          _verdict(b))
        console.print(table)


def _verdict(bars_met: dict[str, Any]) -> str:
    if not bars_met:
        return ""
    return "all met" if bars_met["ACC_bar"] and bars_met["sites_bar"] and bars_met["BWT_bar"] else "missed"


if __name__ == "__main__":
    main()

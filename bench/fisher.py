"""Fisher diagonal estimators on one model and data: exact per-sample (hooks, default; vmap), loop, minibatch-squared.

Run: python bench/fisher.py [--quick]. Prints a table and writes bench/results/fisher.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg.learner.ewc import (  # noqa: E402
    EWCState,
    fisher_diagonal,
    fisher_diagonal_vmap,
    fisher_minibatch_squared,
    fisher_per_sample_loop,
)
from clreg.learner.models import small_cnn  # noqa: E402
from clreg.learner.streams import digits_sites  # noqa: E402
from clreg.learner.train import TrainConfig, train_site  # noqa: E402

Fisher = dict[str, torch.Tensor]
K = TypeVar("K")


def _flat(f: Fisher) -> torch.Tensor:
    return torch.cat([v.flatten() for _, v in sorted(f.items())]).double()


def agreement(f: Fisher, ref: Fisher) -> dict[str, float]:
    """Relative L2 error, cosine and total-mass ratio of an estimate against the reference."""
    a, b = _flat(f), _flat(ref)
    return {
        "rel_error": float((a - b).norm() / b.norm()),
        "cosine": float(a @ b / (a.norm() * b.norm())),
        "mass_ratio": float(a.sum() / b.sum()),
    }


def timed(fns: dict[K, Callable[[], Fisher]], repeats: int) -> dict[K, tuple[Fisher, float]]:
    """Each function's result and median wall time over repeats calls (after one warm-up each).

    The calls are interleaved round-robin so that load from other jobs on the box hits every estimator alike
    and the ratios stay comparable.
    """
    out = {name: fn() for name, fn in fns.items()}
    times: dict[K, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (out[name], sorted(ts)[len(ts) // 2]) for name, ts in times.items()}


def main() -> None:
    """Train the small CNN briefly on the base site, then time and compare the four estimators."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats (smoke run)")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    n = args.samples or (64 if args.quick else 256)
    repeats = 1 if args.quick else 7
    torch.manual_seed(0)
    site = digits_sites(0)[0]
    model = small_cnn(1, 16, 16, 10)
    train_site(model, site.x, site.y, "base", EWCState(), TrainConfig(epochs=2, lr=1e-3, seed=0))
    x, y = torch.from_numpy(site.x[:n]), torch.from_numpy(site.y[:n])
    model.eval()
    estimators: dict[str, Callable[[], Fisher]] = {
        "exact (hooks, chunked)": lambda: fisher_diagonal(model, x, y),
        "exact (vmap, chunked)": lambda: fisher_diagonal_vmap(model, x, y),
        "per-sample loop": lambda: fisher_per_sample_loop(model, x, y),
        "minibatch-squared (bs 32)": lambda: fisher_minibatch_squared(model, x, y, batch_size=32),
    }
    results = timed(estimators, repeats)
    ref = results["per-sample loop"][0]
    approx_s = results["minibatch-squared (bs 32)"][1]
    rows = [
        {"estimator": name, "seconds": s, "x_minibatch": s / approx_s, **agreement(f, ref)}
        for name, (f, s) in results.items()
    ]
    table = Table(title=f"Fisher diagonal, small CNN, {n} digits samples, {torch.get_num_threads()} threads")
    for col in ("estimator", "seconds", "x minibatch-sq", "rel err vs loop", "cosine", "mass ratio"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["estimator"], f"{r['seconds']:.4f}", f"{r['x_minibatch']:.2f}", f"{r['rel_error']:.2e}",
                      f"{r['cosine']:.4f}", f"{r['mass_ratio']:.4f}")
    Console().print(table)
    sweep_fns = {(name, c): (lambda fn=fn, c=c: fn(model, x, y, chunk_size=c))
                 for name, fn in (("hooks", fisher_diagonal), ("vmap", fisher_diagonal_vmap))
                 for c in (16, 32, 64, 128, 256)}
    sweep_fns[("minibatch", 0)] = estimators["minibatch-squared (bs 32)"]  # the ratio's own, interleaved baseline
    swept = timed(sweep_fns, repeats)
    sweeps = {name: {c: swept[(name, c)][1] / swept[("minibatch", 0)][1] for c in (16, 32, 64, 128, 256)}
              for name in ("hooks", "vmap")}
    for name, sweep in sweeps.items():
        Console().print(f"exact ({name}) / minibatch-squared time by chunk size: "
                        + ", ".join(f"{c}: {r:.2f}x" for c, r in sweep.items()) + " (default chunk 64)")
    exact_ratio = rows[0]["x_minibatch"]  # the default estimator, fisher_diagonal
    verdict = {"exact_over_minibatch": exact_ratio, "target_max": 2.0, "met": exact_ratio <= 2.0,
               "estimator": rows[0]["estimator"], "vmap_over_minibatch": rows[1]["x_minibatch"]}
    Console().print(f"exact / minibatch-squared time: {exact_ratio:.2f}x (target <= 2x): {verdict['met']}")
    path = write_result("fisher", {
        "machine": machine_info(), "versions": versions("torch", "numpy", "safetensors"),
        "settings": {"samples": n, "repeats": repeats, "model": "small_cnn(1,16,16,10)", "chunk_size": 64,
                     "threads": torch.get_num_threads(), "quick": args.quick},
        "figures": rows, "verdict": verdict,
        "chunk_sweep_x_minibatch": {str(c): r for c, r in sweeps["hooks"].items()},
        "chunk_sweep_vmap_x_minibatch": {str(c): r for c, r in sweeps["vmap"].items()},
    })
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Fisher diagonal estimators on one model and data: exact per-sample (hooks, default; vmap), loop, minibatch-squared.

Then the zoo's networks (ResNet-18, DenseNet-121 at 64 and 224 px, 1 channel, 2 classes): the exact Fisher against
one training epoch on the same samples (batches of 32, SGD), and per convolution the three exact ways of summing
squared per-sample weight gradients (grouped convolution, unfolded products, paired positions): the total of the
way the rule in learner/fisher.py picks for each layer, of the best way per layer, and of each way alone.
Run: python bench/fisher.py [--quick]. Prints tables and writes bench/results/fisher.json.
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
from clreg.learner import fisher as fisher_module  # noqa: E402
from clreg.learner import zoo  # noqa: E402
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

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/fisher.py',
    'learner/zoo.py',
    'learner/models.py',
)

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


WAYS = {"grouped": fisher_module._conv2d_sq_grouped, "unfolded": fisher_module._conv2d_sq_unfolded,
        "paired": fisher_module._conv2d_sq_paired}


def _epoch_seconds(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One training epoch on x, y: batches of 32, SGD, train mode (what an update's epoch does per sample)."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    net.train()
    t0 = time.perf_counter()
    for start in range(0, len(x), 32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[start : start + 32]), y[start : start + 32]).backward()
        opt.step()
    return time.perf_counter() - t0


def _way_seconds(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """Seconds of each way over every convolution on one chunk, of the rule's pick, and of the best per layer.

    The paired way is not run on layers with more than 64 output positions (a product per position pair): its
    total is then None.
    """
    modules = fisher_module._hooked_modules(net)
    net.eval()
    captured = fisher_module._capture(net, modules, x, y)
    totals: dict[str, float | None] = {"rule": 0.0, "best": 0.0, **dict.fromkeys(WAYS, 0.0)}
    for name, (a, d) in captured.items():
        m = modules[name]
        if not isinstance(m, torch.nn.Conv2d):
            continue
        seconds = {}
        for way, fn in WAYS.items():
            if way == "paired" and d.shape[2] * d.shape[3] > 64:  # a pair per position pair: hopeless, skipped
                seconds[way] = float("inf")
                continue
            t0 = time.perf_counter()
            fn(m, a, d)
            seconds[way] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fisher_module._conv2d_sq(m, a, d)
        totals["rule"] = (totals["rule"] or 0.0) + time.perf_counter() - t0
        totals["best"] = (totals["best"] or 0.0) + min(seconds.values())
        for way, s in seconds.items():
            before = totals[way]
            totals[way] = None if before is None or s == float("inf") else before + s
    return totals


def zoo_rows(quick: bool) -> list[dict[str, object]]:
    """Exact Fisher against one epoch, and the convolution ways, per network and image side."""
    rows = []
    for network, side in (("resnet18", 64), ("densenet121", 64), ("resnet18", 224), ("densenet121", 224)):
        n = 32 if quick or side == 224 else 128
        torch.manual_seed(0)
        net = getattr(zoo, network)(channels=1, height=side, width=side, classes=2)
        x, y = torch.rand(n, 1, side, side), torch.randint(0, 2, (n,))
        epoch = _epoch_seconds(net, x, y)
        t0 = time.perf_counter()
        fisher_diagonal(net, x, y)
        fisher_s = time.perf_counter() - t0
        ways = _way_seconds(net, x[:16], y[:16])
        rows.append({"network": network, "side": side, "samples": n, "epoch_s": epoch, "fisher_s": fisher_s,
                     "fisher_over_epoch": fisher_s / epoch, "conv_ways_s_16_samples": ways})
    table = Table(title=f"Exact Fisher against one training epoch, same samples, {torch.get_num_threads()} threads")
    for col in ("network", "side", "samples", "epoch s", "Fisher s", "Fisher / epoch",
                "conv ways on 16 samples: rule / best / grouped / unfolded / paired s"):
        table.add_column(col)
    for r in rows:
        w: dict[str, float | None] = r["conv_ways_s_16_samples"]  # type: ignore[assignment]
        table.add_row(str(r["network"]), str(r["side"]), str(r["samples"]), f"{r['epoch_s']:.2f}",
                      f"{r['fisher_s']:.2f}", f"{r['fisher_over_epoch']:.2f}",
                      " / ".join("-" if w[k] is None else f"{w[k]:.3f}" for k in ("rule", "best", *WAYS)))
    Console().print(table)
    return rows


def main() -> None:
    """Train the small CNN briefly on the base site, then time and compare the four estimators; then the zoo."""
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
        "zoo": zoo_rows(args.quick),
    })
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

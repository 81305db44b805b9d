"""The serving benchmark's swap phase: 10 promotions under 16-client load on 2 ModelServer replicas.

One embedded stack whose ModelServer runs 2 replicas; the small model of bench/serving.py with 11 versions
(different weights). 16 closed-loop clients send one-image JSON requests through the proxy the whole time
(exceptions and timeouts count as failures): a steady phase, then a promotion every 1.5 s, then a tail.
Per promotion: the time from the alias move (the registry's promote, as the API calls it) until every live
replica says it answers with the new version (their beats: what `served` means). Latency: the steady
phase's p50 and p99 against the worst request that was in flight during the swaps.
Run: python bench/swap.py. Prints a table and writes bench/results/swap.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from bench.serving import MODELS, register, warm  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.learner.models import small_cnn, weights_to_bytes  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.records import ModelVersion  # noqa: E402
from clreg.registry.replicas import Replicas  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'serving/',
    'registry/replicas.py',
    'registry/promotion.py',
)

MODEL, REPLICAS, CLIENTS, PROMOTIONS = "small", 2, 16, 10
STEADY_S, EVERY_S, TAIL_S = 10.0, 1.5, 3.0


def more_versions(reg: RedisRegistry, store: ArtifactStore, n: int) -> list[int]:
    """n further versions of the model: its first version's artifacts with fresh weights each."""
    side, mult = MODELS[MODEL]
    first = reg.get_version(MODEL, 1)
    numbers = []
    for seed in range(1, n + 1):
        torch.manual_seed(seed)
        weights = store.put(weights_to_bytes(small_cnn(1, side, side, 10, width_mult=mult)))
        version = ModelVersion(model=MODEL, number=1, lineage=first.lineage,
                               artifacts={**first.artifacts, "weights": weights})
        numbers.append(reg.register_version(version).number)
    return numbers


class Load:
    """Closed-loop clients recording every request: (start, end, ok, version answering)."""

    def __init__(self, url: str, side: int, clients: int) -> None:
        self.url, self.records = url, [[] for _ in range(clients)]
        self.body = {"inputs": np.random.default_rng(0).random((1, side, side)).round(4).tolist(), "site": "a"}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = http.post(self.url, params={"model": MODEL}, json=self.body)
                    ok, version = r.status_code == 200, r.headers.get("X-Model-Version", "")
                except httpx.HTTPError:
                    ok, version = False, ""
                self.records[i].append((t0, time.perf_counter(), ok, version))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def all(self) -> np.ndarray:
        return np.array([(s, e, ok) for per in self.records for s, e, ok, _ in per], dtype=float)


def swap(reg: RedisRegistry, replicas: Replicas, number: int) -> float:
    """Promote and wait until every live replica answers with the version; seconds from the move."""
    moved = time.perf_counter()
    reg.promote(MODEL, number, who="bench", reason="swap under load")
    while True:
        serving, live = replicas.serving(MODEL, number)
        if live and serving == live:
            return time.perf_counter() - moved
        if time.perf_counter() - moved > 30:
            raise RuntimeError(f"v{number} not served by every replica within 30 s ({serving}/{live})")
        time.sleep(0.005)


def run() -> dict[str, Any]:
    side, mult = MODELS[MODEL]
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-swap"),
                                        serve=ServeSettings(port=8794, replicas=REPLICAS)))
        try:
            reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
            register(reg, store, MODEL, side, mult)
            numbers = more_versions(reg, store, PROMOTIONS)
            url = f"{stack.url}/v1/predict"
            warm(url, MODEL, side)
            replicas = Replicas(reg, stack.serving().beat_interval_s)
            with Load(url, side, CLIENTS) as load:
                time.sleep(STEADY_S)
                swaps_from = time.perf_counter()
                took = []
                for number in numbers:
                    started = time.perf_counter()
                    took.append(swap(reg, replicas, number))
                    time.sleep(max(0.0, EVERY_S - (time.perf_counter() - started)))
                swaps_to = time.perf_counter()
                time.sleep(TAIL_S)
            return summarise(load, took, swaps_from, swaps_to)
        finally:
            stack.stop()


def summarise(load: Load, took: list[float], swaps_from: float, swaps_to: float) -> dict[str, Any]:
    rows = load.all()
    start, end, ok = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
    latency_ms = (end - start) * 1e3
    steady = end < swaps_from
    during = (end >= swaps_from) & (start <= swaps_to)
    steady_p99 = float(np.percentile(latency_ms[steady], 99))
    worst = float(latency_ms[during].max())
    return {"requests": len(rows), "failed": int((~ok).sum()), "failed_during_swaps": int((~ok[during]).sum()),
            "swap_s": took, "swap_median_s": float(np.median(took)), "swap_max_s": float(np.max(took)),
            "steady_p50_ms": float(np.percentile(latency_ms[steady], 50)), "steady_p99_ms": steady_p99,
            "during_p99_ms": float(np.percentile(latency_ms[during], 99)), "during_worst_ms": worst,
            "worst_over_steady_p99": worst / steady_p99,
            "versions_answering": sorted({v for per in load.records for *_, v in per if v})}


def print_table(r: dict[str, Any]) -> None:
    table = Table(title=f"{PROMOTIONS} promotions under {CLIENTS}-client load, {REPLICAS} replicas")
    for col in ("requests", "failed", "swap median s", "swap max s", "steady p50 / p99 ms", "during swaps p99 ms",
                "worst during swaps ms", "worst / steady p99"):
        table.add_column(col, justify="right")
    table.add_row(str(r["requests"]), str(r["failed"]), f"{r['swap_median_s']:.3f}", f"{r['swap_max_s']:.3f}",
                  f"{r['steady_p50_ms']:.1f} / {r['steady_p99_ms']:.1f}", f"{r['during_p99_ms']:.1f}",
                  f"{r['during_worst_ms']:.1f}", f"{r['worst_over_steady_p99']:.2f}")
    Console(width=160).print(table)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    result = run()
    print_table(result)
    verdicts = {"no_failed_request": result["failed"] == 0, "swap_median<=0.2s": result["swap_median_s"] <= 0.2,
                "worst<=1.5x_steady_p99": result["worst_over_steady_p99"] <= 1.5}
    Console().print(verdicts)
    settings = {"model": MODEL, "replicas": REPLICAS, "clients": CLIENTS, "promotions": PROMOTIONS,
                "steady_s": STEADY_S, "every_s": EVERY_S, "tail_s": TAIL_S,
                "poll_interval_s": ServeSettings().poll_interval_s}
    path = write_result("swap", {"machine": machine_info(), "versions": versions("ray", "torch", "httpx"),
                                 "settings": settings, "summary": result, "verdicts": verdicts,
                                 "seconds": time.perf_counter() - started})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

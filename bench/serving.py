"""/v1/predict throughput and latency with Serve request batching off and on, through the real stack, beside a
bare Ray Serve deployment of the same networks.

One embedded stack (Valkey, local Ray, Ray Serve) with one ModelServer application per batching setting and
one bare deployment (the same weights; it parses the JSON, runs the network and answers the probabilities,
nothing else), side by side on the same proxy (/bench-<setting>), all with one replica, one torch thread and
the same max_ongoing_requests, so every side sees the same machine noise: cells
(model x clients x setting) run in a shuffled order, repeated over rounds, and each figure is the median
over rounds. In a cell K closed-loop clients (threads, one httpx connection each) send one-image JSON
requests naming a site for a fixed time. Two models: the default small CNN (1x16x16) and a 4x wider one
on 1x64x64 images, each with a per-site BatchNorm bank of 3 sites and per-site temperatures, as served.
Clients share the machine's cores with the server, as they would on one box.
Run: python bench/serving.py [--seconds S --rounds R]. Prints a table and writes bench/results/serving.json.
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
from ray import serve
from rich.console import Console
from rich.table import Table
from starlette.requests import Request
from starlette.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.learner.models import load_weights, small_cnn, weights_to_bytes  # noqa: E402
from clreg.learner.sitebn import bank_to_bytes, extract_site_bn  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving import model_server  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'serving/',
    'learner/answer.py',
    'registry/replicas.py',
    'registry/inputs.py',
    'clreg/embedded.py',
    'bench/serving_alone.py',
)

MODELS = {"small": (16, 1), "wide": (64, 4)}  # name -> (image side, width multiplier)
SETTINGS = {"off": (1, 0.0), "on": (16, 0.0), "wait-2ms": (16, 0.002)}  # -> (max requests per batch, wait s)
BARE = "bare"  # the baseline: a bare Serve deployment of the same networks
CLIENTS = (1, 4, 16)
SITES = ("a", "b", "c")


def register(reg: RedisRegistry, store: ArtifactStore, name: str, side: int, mult: int) -> bytes:
    """A production version with weights, a 3-site BatchNorm bank and per-site temperatures; its weights."""
    spec = InputSpec(channels=1, height=side, width=side, classes=10)
    reg.create_model(Model(name=name, factory="clreg.learner.models:small_cnn", factory_kwargs={"width_mult": mult},
                           input=spec))
    torch.manual_seed(0)
    net = small_cnn(1, side, side, 10, width_mult=mult)
    fit = SiteCalibration(temperature=0.8, samples=100, ece=0.1, ece_calibrated=0.05, nll=0.4, nll_calibrated=0.3)
    calibration = Calibration(model=name, sites=dict.fromkeys(SITES, fit), pooled=fit)
    artifacts = {"weights": store.put(weights_to_bytes(net)),
                 "bn_bank": store.put(bank_to_bytes({s: extract_site_bn(net) for s in SITES})),
                 "calibration": store.put(calibration.model_dump_json().encode())}
    number = reg.register_version(ModelVersion(model=name, number=1, lineage=Lineage(sites=list(SITES)),
                                               artifacts=artifacts)).number
    reg.promote(name, number, who="bench", reason="serving benchmark")
    return weights_to_bytes(net)


class Bare:
    """The same networks behind Ray Serve with nothing else: parse the JSON, run the network, answer."""

    def __init__(self, weights: dict[str, tuple[int, int, bytes]]) -> None:
        torch.set_num_threads(1)  # as a ModelServer replica (ServeSettings.torch_threads)
        self.nets = {}
        for name, (side, mult, raw) in weights.items():
            net = small_cnn(1, side, side, 10, width_mult=mult)
            load_weights(net, raw)
            self.nets[name] = (net.eval(), side)

    async def __call__(self, request: Request) -> JSONResponse:
        net, side = self.nets[request.query_params["model"]]
        body = await request.json()
        x = torch.tensor(body["inputs"], dtype=torch.float32).reshape(-1, 1, side, side)
        with torch.no_grad():
            probs = torch.softmax(net(x), dim=1)
        return JSONResponse({"probabilities": probs.tolist(), "labels": probs.argmax(dim=1).tolist()})


def load(url: str, model: str, side: int, clients: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load: each client sends its next request when the last is answered."""
    body = {"inputs": np.random.default_rng(0).random((1, side, side)).round(4).tolist(), "site": "a"}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = http.post("", params={"model": model}, json=body).status_code == 200
                except httpx.HTTPError:  # refused, reset, timed out: a failure like a non-200
                    ok = False
                latencies[i].append(time.perf_counter() - t0)
                errors[i] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array([x for per in latencies for x in per]) * 1e3
    return {"requests": len(lat), "errors": sum(errors), "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def warm(url: str, model: str, side: int) -> None:
    """Wait until the model answers (replicas poll the alias), then a few requests to warm the path."""
    body = {"inputs": np.zeros((1, side, side)).tolist(), "site": "a"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.post(url, params={"model": model}, json=body, timeout=30).status_code == 200:
            break
        time.sleep(0.2)
    for _ in range(20):
        httpx.post(url, params={"model": model}, json=body, timeout=30)


def deploy_settings(stack: embedded.Stack, weights: dict[str, tuple[int, int, bytes]]) -> dict[str, str]:
    """One ModelServer application per batching setting beside the stack's own, and the bare deployment;
    setting -> its URL."""
    urls = {}
    cfg = stack.serving()
    bare = serve.deployment(name="Bare", max_ongoing_requests=cfg.max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0})(Bare)
    serve.run(bare.bind(weights), name=f"bench-{BARE}", route_prefix=f"/bench-{BARE}", blocking=False)
    urls[BARE] = f"{stack.url}/bench-{BARE}"
    for setting, (max_requests, wait) in SETTINGS.items():
        cfg = stack.serving().model_copy(update={"batch_max_requests": max_requests, "batch_wait_s": wait})
        serve.run(model_server.deployment(cfg).bind(cfg.model_dump(mode="json")), name=f"bench-{setting}",
                  route_prefix=f"/bench-{setting}", blocking=False)
        urls[setting] = f"{stack.url}/bench-{setting}"
    return urls


def run(seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Every (round, model, clients, setting) cell, settings shuffled within each (model, clients)."""
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-serving"),
                                        serve=ServeSettings(port=8791)))
        try:
            reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
            weights = {name: (side, mult, register(reg, store, name, side, mult))
                        for name, (side, mult) in MODELS.items()}
            urls = deploy_settings(stack, weights)
            for url in urls.values():
                for name, (side, _) in MODELS.items():
                    warm(url, name, side)
            for r in range(rounds):
                for name, (side, _) in MODELS.items():
                    for clients in CLIENTS:
                        for setting in rng.permutation([*SETTINGS, BARE]):
                            rows.append({"round": r, "model": name, "batching": str(setting), "clients": clients,
                                         **load(urls[setting], name, side, clients, seconds)})
                            print(rows[-1], file=sys.stderr)
        finally:
            stack.stop()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds of each cell's throughput and latency percentiles."""
    out = []
    for name in MODELS:
        for clients in CLIENTS:
            for setting in [*SETTINGS, BARE]:
                cell = [r for r in rows if (r["model"], r["clients"], r["batching"]) == (name, clients, setting)]
                out.append({"model": name, "clients": clients, "batching": setting,
                            **{k: float(np.median([c[k] for c in cell])) for k in ("rps", "p50_ms", "p99_ms")},
                            "errors": sum(c["errors"] for c in cell), "requests": sum(c["requests"] for c in cell)})
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    sides = [*SETTINGS, BARE]
    table = Table(title="/v1/predict, one image per request, closed loop, median over rounds")
    for col in ("model", "clients", *(f"req/s {s}" for s in sides), "off / bare",
                *(f"p50 / p99 ms {s}" for s in sides), "failed"):
        table.add_column(col)
    for name in MODELS:
        for clients in CLIENTS:
            cell = {r["batching"]: r for r in rows if r["model"] == name and r["clients"] == clients}
            table.add_row(name, str(clients), *(f"{cell[s]['rps']:.0f}" for s in sides),
                          f"{cell['off']['rps'] / cell[BARE]['rps']:.2f}",
                          *(f"{cell[s]['p50_ms']:.1f} / {cell[s]['p99_ms']:.1f}" for s in sides),
                          str(sum(c["errors"] for c in cell.values())))
    Console(width=200).print(table)


def verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """clreg's default (batching off) against the bare deployment, at every model and client count."""
    cell = {(r["model"], r["clients"], r["batching"]): r for r in rows}
    ratios = {f"{m}@{c}": cell[(m, c, "off")]["rps"] / cell[(m, c, BARE)]["rps"] for m in MODELS for c in CLIENTS}
    return {"off_over_bare": ratios, "clreg>=0.9x_bare_everywhere": all(v >= 0.9 for v in ratios.values()),
            "failed_requests": sum(r["errors"] for r in rows)}


def alone(seconds: float, rounds: int) -> dict[str, Any]:
    """The row a user meets (bench/serving_alone.py): clreg up against bare Serve alone on the box, per clients,
    medians over rounds, and the ratio."""
    from bench import serving_alone

    every = serving_alone.run(seconds, rounds, CLIENTS)
    rows = [r for r in every if "clients" in r]
    idle = {side: float(np.median([sum(r["idle_cpu"].values()) for r in every
                                   if "idle_cpu" in r and r["side"] == side])) for side in ("clreg up", "bare alone")}
    cells = {}
    for clients in CLIENTS:
        for side in ("clreg up", "bare alone"):
            cell = [r for r in rows if (r["side"], r["clients"]) == (side, clients)]
            medians = {k: float(np.median([c[k] for c in cell])) for k in ("rps", "p50_ms", "p99_ms")}
            cells[f"{side}@{clients}"] = {**medians, "errors": sum(c["errors"] for c in cell)}
    ratios = {c: cells[f"clreg up@{c}"]["rps"] / cells[f"bare alone@{c}"]["rps"] for c in CLIENTS}
    table = Table(title="the stack as clreg up starts it against bare Serve alone on the box (small CNN, 1x16x16)")
    for col in ("clients", "req/s clreg up", "req/s bare alone", "clreg up / bare", "p50 / p99 ms clreg up",
                "p50 / p99 ms bare", "failed"):
        table.add_column(col)
    for c in CLIENTS:
        a, b = cells[f"clreg up@{c}"], cells[f"bare alone@{c}"]
        table.add_row(str(c), f"{a['rps']:.0f}", f"{b['rps']:.0f}", f"{ratios[c]:.2f}",
                      f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f}", f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f}",
                      str(int(a["errors"] + b["errors"])))
    Console(width=160).print(table)
    Console(width=160).print("at rest, answered and warm (share of one core, median over rounds): " +
                             ", ".join(f"{side} {share:.2f}" for side, share in idle.items()))
    return {"rows": rows, "cells": cells, "ratios": {str(c): r for c, r in ratios.items()},
            "idle_cpu": idle, "idle_cpu_by_process": [r for r in every if "idle_cpu" in r],
            "clreg_up>=0.9x_bare_alone": all(r >= 0.9 for r in ratios.values()),
            "failed_requests": sum(r["errors"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell (model x clients x setting)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alone-seconds", type=float, default=8.0, help="per cell of the clreg up row")
    parser.add_argument("--alone-rounds", type=int, default=2)
    parser.add_argument("--only-alone", action="store_true", help="only the clreg up row (a look, no result file)")
    args = parser.parse_args()
    if args.only_alone:
        Console().print(alone(args.alone_seconds, args.alone_rounds)["ratios"])
        return
    started = time.perf_counter()
    rows = run(args.seconds, args.rounds)
    summary = summarise(rows)
    print_table(summary)
    checks = verdicts(summary)
    stack_row = alone(args.alone_seconds, args.alone_rounds)
    Console().print(checks)
    settings = {"seconds_per_cell": args.seconds, "rounds": args.rounds, "models": MODELS, "batching": SETTINGS,
                "clients": CLIENTS,
                "request": "JSON, 1 image, site named (per-site BatchNorm and temperature)", "replicas": 1,
                "max_ongoing_requests": ServeSettings().max_ongoing_requests,
                "baseline": "bare Serve deployment of the same networks (JSON in, softmax out), same replica options"}
    path = write_result("serving", {"machine": machine_info(), "versions": versions("ray", "torch", "httpx"),
                                    "settings": settings, "summary": summary, "verdicts": checks, "rows": rows,
                                    "clreg_up_vs_bare_alone": stack_row,
                                    "seconds": time.perf_counter() - started})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

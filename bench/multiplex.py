"""Many models on few replicas: 50 models served by 2 replicas that hold at most 8 each (Serve's model
multiplexing), against the same 2 replicas loading every model.

One embedded stack; the wide model of bench/serving.py (64x64 inputs, 3 sites' BatchNorm) registered 50 times.
Phase 1: one request to each model in turn (cold: loaded by that request), then one more (warm); each
replica's resident memory (RSS, from its pid) and the models it says it holds. Phase 2: 8 clients for 20 s
on models drawn uniformly from the 50 (every request a possible cold load): failures, p50, p99. Phase 3:
promote a new version of a held model and time until it answers with it (swapped in place: the event names
the previous version). Then the baseline: the same replicas redeployed loading every model, their RSS and
the same mixed load. Poll cost: a replica's read at rest (nothing moved) and after a move, with 1 and 50 models, in
round trips to Redis and milliseconds.
Run: python bench/multiplex.py. Prints tables and writes bench/results/multiplex.json.
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
import psutil
import redis
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from bench.serving import MODELS, register  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.learner.models import small_cnn, weights_to_bytes  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.events import EventLog  # noqa: E402
from clreg.registry.records import ModelVersion  # noqa: E402
from clreg.registry.replicas import Replicas  # noqa: E402
from clreg.registry.shadow import Shadows  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving import deploy  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.serving.model_server import read_moves  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'serving/',
)

KIND, N_MODELS, PER_REPLICA, REPLICAS, CLIENTS, MIXED_S = "wide", 50, 8, 2, 8, 20.0


def _body(side: int) -> dict:
    return {"inputs": np.random.default_rng(0).random((1, side, side)).round(4).tolist(), "site": "a"}


def _predict(http: httpx.Client, url: str, model: str, body: dict) -> tuple[float, bool, str]:
    t0 = time.perf_counter()
    try:
        r = http.post(url, params={"model": model}, json=body, headers={"serve_multiplexed_model_id": model})
        ok, version = r.status_code == 200, r.headers.get("X-Model-Version", "")
    except httpx.HTTPError:
        ok, version = False, ""
    return (time.perf_counter() - t0) * 1e3, ok, version


def replica_memory(reg: RedisRegistry) -> list[dict[str, Any]]:
    """Each live replica's RSS (MiB) and the models it holds, from its beat (the replica id carries its pid)."""
    time.sleep(1.2)  # the next beat
    out = []
    for beat in Replicas(reg).live():
        pid = int(beat.replica.split(":")[1])
        out.append({"replica": beat.replica, "rss_mib": psutil.Process(pid).memory_info().rss / 2**20,
                    "models_held": len(beat.served)})
    return out


def cold_then_warm(url: str, names: list[str], body: dict) -> dict[str, Any]:
    cold, warm, failed = [], [], 0
    with httpx.Client(timeout=60) as http:
        for name in names:
            for bucket in (cold, warm):
                ms, ok, _ = _predict(http, url, name, body)
                bucket.append(ms)
                failed += not ok
    return {"cold_p50_ms": float(np.median(cold)), "cold_max_ms": float(np.max(cold)),
            "warm_p50_ms": float(np.median(warm)), "warm_max_ms": float(np.max(warm)), "failed": failed}


def mixed(url: str, names: list[str], body: dict) -> dict[str, Any]:
    """Closed-loop clients on uniformly drawn models: every miss of a replica's 8 is a cold load."""
    records: list[tuple[float, bool]] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                ms, ok, _ = _predict(http, url, names[int(rng.integers(len(names)))], body)
                with lock:
                    records.append((ms, ok))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(MIXED_S)
    stop.set()
    for t in threads:
        t.join()
    ms = np.array([m for m, _ in records])
    return {"requests": len(records), "failed": sum(not ok for _, ok in records),
            "throughput_rps": len(records) / MIXED_S, "p50_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99))}


def swap_held(reg: RedisRegistry, store: ArtifactStore, url: str, name: str, body: dict) -> dict[str, Any]:
    """Promote a new version of a model a replica holds; seconds until it answers with it, and how it swapped."""
    side, mult = MODELS[KIND]
    torch.manual_seed(7)
    first = reg.get_version(name, 1)
    weights = store.put(weights_to_bytes(small_cnn(1, side, side, 10, width_mult=mult)))
    number = reg.register_version(ModelVersion(model=name, number=1, lineage=first.lineage,
                                               artifacts={**first.artifacts, "weights": weights})).number
    with httpx.Client(timeout=60) as http:
        for _ in range(3):  # the most recently used model of the replica it routes to: held
            _predict(http, url, name, body)
        moved = time.perf_counter()
        reg.promote(name, number, who="bench", reason="swap a held model")
        while _predict(http, url, name, body)[2] != str(number):
            if time.perf_counter() - moved > 30:
                raise RuntimeError(f"{name} v{number} not answered within 30 s")
    took = time.perf_counter() - moved
    swaps = [e.data for e in EventLog(reg).read(name) if e.kind == "serving.swapped"]
    return {"seconds": took, "in_place": any(d["version"] == number and d["previous"] == 1 for d in swaps)}


class _Counting(redis.Connection):
    """A connection that counts what it sends: one count per round trip (a pipeline sends once)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


def poll_cost(stack: embedded.Stack, models: int) -> dict[str, float]:
    """A replica's poll with `models` models: at rest (the generation alone) and after a move (the full read)."""
    cfg = stack.store.model_copy(update={"prefix": f"bench-poll-{models}"})
    pool = redis.ConnectionPool.from_url(stack.redis_url, decode_responses=True, connection_class=_Counting)
    reg = RedisRegistry(cfg, client=redis.Redis(connection_pool=pool))
    for i in range(models):
        register(reg, ArtifactStore(stack.settings.artifacts()), f"p{i}", 16, 1)
    shadows, out = Shadows(reg), {}
    for phase, read in (("rest", reg.generation), ("moved", lambda: read_moves(reg, shadows))):
        read()
        before, t0 = _Counting.sent, time.perf_counter()
        for _ in range(200):
            read()
        out[f"{phase}_ms"] = (time.perf_counter() - t0) / 200 * 1e3
        out[f"{phase}_round_trips"] = (_Counting.sent - before) / 200
    return out


def run() -> dict[str, Any]:
    side, mult = MODELS[KIND]
    body = _body(side)
    with tempfile.TemporaryDirectory() as home:
        serve_cfg = ServeSettings(port=8796, replicas=REPLICAS, models_per_replica=PER_REPLICA)
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-mux"), serve=serve_cfg))
        try:
            reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
            names = [f"m{i:02d}" for i in range(N_MODELS)]
            for name in names:
                register(reg, store, name, side, mult)
            url = f"{stack.url}/v1/predict"
            result: dict[str, Any] = {"cold_warm": cold_then_warm(url, names, body)}
            result["memory_multiplexed"] = replica_memory(reg)
            result["mixed"] = mixed(url, names, body)
            result["swap_held"] = swap_held(reg, store, url, names[-1], body)
            result["memory_multiplexed_after"] = replica_memory(reg)
            deploy.start(stack.serving().model_copy(update={"models_per_replica": None}))
            time.sleep(5)  # every replica loads every model at start
            result["memory_every_model"] = replica_memory(reg)
            result["mixed_every_model"] = mixed(url, names, body)
            result["poll"] = {str(n): poll_cost(stack, n) for n in (1, N_MODELS)}
            return result
        finally:
            stack.stop()


def print_tables(r: dict[str, Any]) -> None:
    console = Console(width=160)
    cw, mx, sw = r["cold_warm"], r["mixed"], r["swap_held"]
    table = Table(title=f"{N_MODELS} {KIND} models, {REPLICAS} replicas holding at most {PER_REPLICA} each")
    for col in ("cold p50 / max ms", "warm p50 ms", "failed", "swap of a held model s", "in place"):
        table.add_column(col, justify="right")
    table.add_row(f"{cw['cold_p50_ms']:.0f} / {cw['cold_max_ms']:.0f}", f"{cw['warm_p50_ms']:.1f}",
                  str(cw["failed"]), f"{sw['seconds']:.3f}", str(sw["in_place"]))
    console.print(table)
    load = Table(title=f"{CLIENTS} clients for {MIXED_S:.0f} s on models drawn uniformly from {N_MODELS}")
    for col in ("deployment", "req/s", "p50 ms", "p99 ms", "failed"):
        load.add_column(col, justify="right")
    for label, m in ((f"multiplexed, {PER_REPLICA} per replica", mx), ("every model on every replica",
                                                                      r["mixed_every_model"])):
        load.add_row(label, f"{m['throughput_rps']:.0f}", f"{m['p50_ms']:.1f}", f"{m['p99_ms']:.1f}", str(m["failed"]))
    console.print(load)
    mem = Table(title="replica RSS (MiB) and models held")
    for col in ("deployment", "replica RSS MiB", "models held"):
        mem.add_column(col, justify="right")
    for label, key in (("multiplexed, after phase 1", "memory_multiplexed"),
                       ("multiplexed, after mixed load", "memory_multiplexed_after"),
                       ("every model on every replica", "memory_every_model")):
        mem.add_row(label, " / ".join(f"{m['rss_mib']:.0f}" for m in r[key]),
                    " / ".join(str(m["models_held"]) for m in r[key]))
    console.print(mem)
    poll = Table(title="a replica's poll: round trips and ms")
    for col in ("models", "at rest: round trips", "at rest ms", "after a move: round trips", "after a move ms"):
        poll.add_column(col, justify="right")
    for n, p in r["poll"].items():
        poll.add_row(n, f"{p['rest_round_trips']:.0f}", f"{p['rest_ms']:.3f}", f"{p['moved_round_trips']:.0f}",
                     f"{p['moved_ms']:.3f}")
    console.print(poll)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    result = run()
    print_tables(result)
    held = [m["models_held"] for key in ("memory_multiplexed", "memory_multiplexed_after")
            for m in result[key]]
    failed = sum(result[k]["failed"] for k in ("cold_warm", "mixed", "mixed_every_model"))
    verdicts = {"no_failed_request": failed == 0,
                f"at_most_{PER_REPLICA}_per_replica": max(held) <= PER_REPLICA,
                "held_model_swapped_in_place": result["swap_held"]["in_place"],
                "poll_at_rest_one_round_trip": all(p["rest_round_trips"] == 1 for p in result["poll"].values())}
    Console().print(verdicts)
    settings = {"model": KIND, "models": N_MODELS, "per_replica": PER_REPLICA, "replicas": REPLICAS,
                "clients": CLIENTS, "mixed_s": MIXED_S}
    path = write_result("multiplex", {"machine": machine_info(), "versions": versions("ray", "torch", "httpx"),
                                      "settings": settings, "summary": result, "verdicts": verdicts,
                                      "seconds": time.perf_counter() - started})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

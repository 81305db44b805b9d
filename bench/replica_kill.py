"""A ModelServer replica killed (SIGKILL) under 16-client predict load: what clients see until Serve replaces it.

One embedded stack per row, its ModelServer at 1 and at 2 replicas, serving the small model of bench/serving.py.
16 closed-loop clients send one-image JSON requests through the proxy the whole time (swap.py's Load: every
request recorded; exceptions and timeouts count as failures): a steady phase, then one replica's process is
killed, then the clients go on until the stack has as many live replicas as before, each answering, and a tail.
Per row: requests and failed requests (by status or exception), the window from the kill to the last failure,
the seconds until Serve's replacement answers, and the latency of the steady phase against the worst after the kill.
Run: python bench/replica_kill.py. Prints a table and writes bench/results/replica_kill.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from bench.serving import MODELS, register, warm  # noqa: E402
from bench.swap import MODEL, Load  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.replicas import Replicas  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'serving/',
    'registry/replicas.py',
)

CLIENTS, STEADY_S, TAIL_S, WITHIN_S = 16, 10.0, 10.0, 120.0


def model_server_pids() -> list[int]:
    """The pid of every live ModelServer replica (Ray names a replica's process after its deployment)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ServeReplica:") and "ModelServer" in title:
            found.append(int(entry.name))
    return sorted(found)


def replaced(replicas: Replicas, before: list[int], killed: int) -> bool:
    """As many live replicas as before, none of them the killed one, each saying it serves version 1."""
    now = model_server_pids()
    serving, live = replicas.serving(MODEL, 1)
    return len(now) == len(before) and killed not in now and live >= len(before) and serving == live


def run_row(replica_count: int, port: int) -> dict[str, Any]:
    side, mult = MODELS[MODEL]
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix=f"bench-kill-{replica_count}"),
                                        serve=ServeSettings(port=port, replicas=replica_count)))
        try:
            reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
            register(reg, store, MODEL, side, mult)
            url = f"{stack.url}/v1/predict"
            warm(url, MODEL, side)
            replicas = Replicas(reg, stack.serving().beat_interval_s)
            before = model_server_pids()
            with Load(url, side, CLIENTS) as load:
                time.sleep(STEADY_S)
                killed_at, doomed = time.perf_counter(), before[0]
                os.kill(doomed, signal.SIGKILL)
                while not replaced(replicas, before, doomed):
                    if time.perf_counter() - killed_at > WITHIN_S:
                        raise RuntimeError(f"no replacement answering within {WITHIN_S:.0f} s")
                    time.sleep(0.05)
                back_s = time.perf_counter() - killed_at
                time.sleep(TAIL_S)
            return summarise(load, replica_count, killed_at, back_s)
        finally:
            stack.stop()


def summarise(load: Load, replica_count: int, killed_at: float, back_s: float) -> dict[str, Any]:
    rows = load.all()
    start, end, ok = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
    latency_ms = (end - start) * 1e3
    steady, after = end < killed_at, end >= killed_at
    kinds = Counter(v or "exception" for per in load.records for *_, good, v in per if not good)
    failed_end = end[~ok]
    return {"replicas": replica_count, "requests": len(rows), "failed": int((~ok).sum()),
            "failed_kinds": dict(kinds), "last_failure_after_kill_s":
                float(failed_end.max() - killed_at) if failed_end.size else 0.0,
            "replacement_answering_s": back_s,
            "steady_p99_ms": float(np.percentile(latency_ms[steady], 99)),
            "worst_after_kill_ms": float(latency_ms[after].max())}


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"one ModelServer replica SIGKILLed under {CLIENTS}-client load")
    for col in ("replicas", "requests", "failed", "failures", "last failure after kill s",
                "replacement answering s", "steady p99 ms", "worst after kill ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["replicas"]), str(r["requests"]), str(r["failed"]),
                      ", ".join(f"{k}: {n}" for k, n in r["failed_kinds"].items()) or "-",
                      f"{r['last_failure_after_kill_s']:.2f}", f"{r['replacement_answering_s']:.1f}",
                      f"{r['steady_p99_ms']:.1f}", f"{r['worst_after_kill_ms']:.0f}")
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="replica counts, one stack each")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [run_row(int(n), 8797) for n in args.replicas.split(",")]
    print_table(rows)
    settings = {"model": MODEL, "clients": CLIENTS, "steady_s": STEADY_S, "tail_s": TAIL_S}
    path = write_result("replica_kill", {"machine": machine_info(), "versions": versions("ray", "torch", "httpx"),
                                         "settings": settings, "rows": rows, "seconds": time.perf_counter() - started})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

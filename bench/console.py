"""Ops console page times on a busy registry: 200 versions, 1,000 alerts, 5 sites, 200 drift checks.

One embedded stack (Valkey, local Ray, Ray Serve with the gateway); one model filled through the registry
(each version with a 5-site gate report; statuses mixed as a long-lived model's are), 1,000 alerts in the
alerts stream and 200 drift reports. A signed-in client (the ops token's session cookie) fetches each page
in turn, round after round, through the Serve proxy; beside each page, the JSON route that carries the same
figures is timed the same way (the API's own cost of those reads, for scale). Goal: p50 <= 300 ms a page.
Run: python bench/console.py [--rounds N]. Prints a table and writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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
from clreg import embedded  # noqa: E402
from clreg.learner.models import small_cnn, weights_to_bytes  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.events import EventLog  # noqa: E402
from clreg.registry.findings import Calibration, DriftReport, GateReport, SiteCalibration, SiteGate  # noqa: E402
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, Site, VersionStatus  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving.config import ServeSettings  # noqa: E402
from clreg.settings import RedisSettings, Settings  # noqa: E402

# what its results describe (bench/freshness.py: a later change to these makes them stale)
EXERCISES = (
    'serving/console.py',
    'serving/console_data.py',
    'serving/templates/',
    'serving/gateway.py',
    'serving/services.py',
    'serving/model_routes.py',
    'serving/ops_routes.py',
    'bench/console.py',
)

MODEL, VERSIONS, ALERTS, DRIFT = "busy", 200, 1000, 200
SITES = ("site-a", "site-b", "site-c", "site-d", "site-e")
PAGES = {  # page -> the JSON route with the same figures
    "models": ("/ui/models", "/v1/models"),
    "model": (f"/ui/models/{MODEL}", f"/v1/models/{MODEL}/versions"),
    "sites": ("/ui/sites", "/v1/sites"),
    "alerts": ("/ui/alerts", "/v1/alerts"),
}


def fill(reg: RedisRegistry, store: ArtifactStore, count: int = VERSIONS) -> None:
    """The model, its sites, `count` versions with gate reports, drift reports and alerts."""
    reg.create_model(Model(name=MODEL, factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=16, width=16, classes=2)))
    for s in SITES:
        reg.add_site(Site(name=s, token_sha256="0" * 64))
    rng = np.random.default_rng(0)
    fit = SiteCalibration(temperature=1.1, samples=120, ece=0.08, ece_calibrated=0.05, nll=0.3, nll_calibrated=0.28,
                          scores=rng.random(120).round(6).tolist(), labels=rng.integers(0, 2, 120).tolist(),
                          accuracy=0.9, accuracy_interval=(0.85, 0.94), error_calibrated=0.03, ece_floor=0.05)
    torch.manual_seed(0)
    artifacts = {"weights": store.put(weights_to_bytes(small_cnn(1, 16, 16, 2))),
                 "calibration": store.put(Calibration(model=MODEL, sites=dict.fromkeys(SITES, fit),
                                                      pooled=fit).model_dump_json().encode())}
    for n in range(1, count + 1):
        version = reg.register_version(ModelVersion(model=MODEL, number=n, lineage=Lineage(sites=list(SITES)),
                                                    artifacts=artifacts))
        passed = n % 4 != 0
        gate = GateReport(id=f"g-{n}", model=MODEL, candidate=n, production=n - 1 or None, tolerance=0.02,
                          confidence=0.95, passed=passed, reasons=[] if passed else ["site-a lost 0.05"],
                          sites=[SiteGate(site=s, samples=120, candidate_accuracy=float(rng.uniform(0.8, 0.95)),
                                          production_accuracy=0.9, delta=0.0, lower_bound=-0.01, new_site=False,
                                          passed=passed) for s in SITES])
        reg.reports.put_gate(gate)
        if passed:
            reg.set_status(MODEL, version.number, VersionStatus.BLESSED, gate_report_id=gate.id)
            reg.promote(MODEL, version.number, who="bench", reason=f"passed {gate.id}")
        else:
            reg.set_status(MODEL, version.number, VersionStatus.REJECTED, gate_report_id=gate.id)
    for i in range(DRIFT):
        reg.reports.put_drift(DriftReport(id=f"d-{i}", model=MODEL, site=SITES[i % len(SITES)], batch_id=f"{i:064x}",
                                          reference_version=1, samples=100, drifted_share=float(rng.random()),
                                          drift=bool(i % 3 == 0)))
    events = EventLog(reg)
    for i in range(ALERTS):
        events.append(MODEL, "drift.alert", site=SITES[i % len(SITES)], report_id=f"d-{i % DRIFT}",
                      drifted_share=0.5)


def timed(http: httpx.Client, path: str, rounds: int) -> dict[str, float]:
    """p50 and p95 of `rounds` sequential GETs, each answered 200."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = http.get(path)
        times.append((time.perf_counter() - t0) * 1e3)
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:200]}")
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "bytes": len(r.content)}


def run(rounds: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as home:
        stack = embedded.start(Settings(home=Path(home), redis=RedisSettings(prefix="bench-console"),
                                        serve=ServeSettings(port=8792)))
        try:
            reg = RedisRegistry(stack.store)
            fill(reg, ArtifactStore(stack.settings.artifacts()))
            with httpx.Client(base_url=stack.url, timeout=30) as ui, \
                    httpx.Client(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.ops_token}"}) as api:
                signed = ui.post("/ui/login", data={"token": stack.ops_token})
                if signed.status_code != 303:
                    raise RuntimeError(f"sign-in answered {signed.status_code}")
                for page, (path, json_path) in PAGES.items():
                    timed(ui, path, 3)  # warm-up
                    rows.append({"page": page, "path": path, **timed(ui, path, rounds),
                                 "api_path": json_path, **{f"api_{k}": v for k, v in
                                                           timed(api, json_path, rounds).items()}})
                    print(rows[-1], file=sys.stderr)
        finally:
            stack.stop()
    return rows


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    table = Table(title=f"console pages: {VERSIONS} versions, {ALERTS} alerts, {len(SITES)} sites, {rounds} GETs each")
    for col in ("page", "p50 ms", "p95 ms", "KiB", "JSON route", "p50 ms (JSON)", "p95 ms (JSON)"):
        table.add_column(col, justify="left" if col in ("page", "JSON route") else "right")
    for r in rows:
        table.add_row(r["path"], f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['bytes'] / 1024:.0f}", r["api_path"],
                      f"{r['api_p50_ms']:.0f}", f"{r['api_p95_ms']:.0f}")
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.rounds)
    print_table(rows, args.rounds)
    verdict = {"p50<=300ms_every_page": all(r["p50_ms"] <= 300 for r in rows)}
    Console().print(verdict)
    path = write_result("console", {"machine": machine_info(), "versions": versions("fastapi", "jinja2", "ray"),
                                    "settings": {"versions": VERSIONS, "alerts": ALERTS, "drift_reports": DRIFT,
                                                 "sites": len(SITES), "rounds": args.rounds},
                                    "summary": rows, "verdicts": verdict, "seconds": time.perf_counter() - started})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()

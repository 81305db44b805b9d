"""`clreg demo`: five simulated hospitals push digits batches through a fresh local stack."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from clreg import context, embedded
from clreg.client import ApiError, Client, npz_bytes
from clreg.daemon import Daemon
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.dicom import dicom_file, dicom_study
from clreg.settings import Settings

MODEL = "digits"
DICOM_SITE = "blur-noise"


@dataclass
class SiteOutcome:
    site: str
    batch_id: str
    drift: str
    version: int | None
    status: str
    gate_lines: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)  # site -> the version's SiteCalibration as JSON
    retried: list[dict[str, Any]] = field(default_factory=list)  # update.retrying events: rejected version, new lambda
    serving: int | None = None


def run(settings: Settings, console: Console, seed: int = 0) -> bool:
    """Run the demo on a fresh state folder; True when it ends with >= 3 promotions and a drift alert."""
    home = settings.home / "demo"
    shutil.rmtree(home, ignore_errors=True)
    update: dict[str, Any] = {"home": home}
    if settings.redis.url:  # a shared Redis: keep the demo's keys apart from everything else
        prefix = f"{settings.redis.prefix}-demo-{int(time.time())}"
        update["redis"] = settings.redis.model_copy(update={"prefix": prefix})
    settings = settings.model_copy(update=update)
    console.print(f"[bold]clreg demo[/] state in {home}; starting Redis, Ray and Ray Serve ...")
    stack = embedded.start(settings)
    daemon = Daemon(context.build(settings, stack.store, stack.url), settings.daemon, role="up")
    thread = threading.Thread(target=daemon.run, name="clreg-daemon", daemon=True)
    thread.start()
    try:
        return _drive(Client(stack.url, stack.admin_token), console, seed)
    finally:
        daemon.stop()
        thread.join(timeout=30)
        stack.stop()


def _drive(client: Client, console: Console, seed: int) -> bool:
    client.wait_ready()
    sites = digits_sites(seed=seed)
    client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
    outcomes = []
    for site in sites:
        token = client.add_site(site.name)["token"]
        started = time.perf_counter()
        if site.name == DICOM_SITE:  # this hospital sends its study as it leaves the PACS
            console.print(f"site {site.name} pushes a DICOM study of {len(site.y)} files plus labels.csv")
            pushed = client.push(site.name, token, _as_dicom_study(site.x, site.y), MODEL,
                                 content_type="application/zip")
        else:
            pushed = client.push(site.name, token, npz_bytes(to_uint8(site.x), site.y), MODEL)
        outcome = _follow(client, site.name, pushed["batch_id"], sites[0].x[:1])
        outcomes.append(outcome)
        _print_site(console, outcome, time.perf_counter() - started)
    answer, served = client.predict(sites[0].x[:4], MODEL)
    promoted = sum(o.status == "promoted" for o in outcomes)
    alerts = client.get("/v1/alerts", model=MODEL)
    drift_alerts = sum(a["kind"] == "drift.alert" for a in alerts)
    production = client.get(f"/v1/models/{MODEL}/aliases")["aliases"].get("production")
    console.print(f"\n[bold]Summary[/]: {promoted} promoted versions, {drift_alerts} drift alerts, "
                  f"production = v{production}.")
    console.print(f"POST /v1/predict answered by v{served} (X-Model-Version): labels {answer['labels']} "
                  f"for true labels {sites[0].y[:4].tolist()}")
    _print_readiness(client, console, [s.name for s in sites])
    return promoted >= 3 and drift_alerts >= 1 and served == production


def _print_readiness(client: Client, console: Console, sites: list[str]) -> None:
    """Where the production version may be trusted: each site's validation (clreg sites report SITE)."""
    table = Table(title="readiness of the production version per site", title_justify="left")
    for column in ("site", "validated", "accuracy", "95% interval", "ECE after", "why not"):
        table.add_column(column)
    for site in sites:
        r = client.get(f"/v1/sites/{site}/validation", model=MODEL)
        held = r["heldout"] or {}
        low, high = held.get("accuracy_interval") or (float("nan"), float("nan"))
        table.add_row(site, "[green]yes[/]" if r["validated"] else "[red]no[/]", f"{held.get('accuracy', 0):.3f}",
                      f"{low:.3f} - {high:.3f}", f"{held.get('ece_calibrated', 0):.3f}", "; ".join(r["reasons"]))
    console.print(table)


def _as_dicom_study(x: np.ndarray, y: np.ndarray) -> bytes:
    """Images in [0, 1] as 12-bit MONOCHROME2 DICOM files in a zip with labels.csv."""
    files = {f"img{i:05d}.dcm": dicom_file(np.rint(img.reshape(img.shape[-2:]) * 4095)) for i, img in enumerate(x)}
    return dicom_study(files, {name: int(label) for name, label in zip(files, y, strict=True)})


def _follow(client: Client, site: str, batch_id: str, probe: np.ndarray) -> SiteOutcome:
    state = client.wait_batch(batch_id)
    drift = "no reference yet"
    if state.get("drift_report_id"):
        report = client.get(f"/v1/drift/{state['drift_report_id']}")
        drift = f"{'DRIFT' if report['drift'] else 'none'} ({report['drifted_share']:.0%} of features"
        drift += ", labels shifted)" if (report.get("label_drift") or {}).get("drifted") else ")"
    outcome = SiteOutcome(site=site, batch_id=batch_id, drift=drift, version=state.get("version"),
                          status=state["status"])
    if outcome.version is not None:
        record = client.get(f"/v1/models/{MODEL}/versions/{outcome.version}")
        outcome.gate_lines = (record.get("gate_report") or {}).get("sites", [])
        outcome.calibration = (record.get("calibration") or {}).get("sites", {})
        outcome.retried = [e["data"] for e in client.get("/v1/events", model=MODEL)
                           if e["kind"] == "update.retrying" and batch_id in e["data"].get("batches", [])]
    production = client.get(f"/v1/models/{MODEL}/aliases")["aliases"].get("production")
    outcome.serving = _served_version(client, probe, production)
    return outcome


def _served_version(client: Client, probe: np.ndarray, expected: int | None, timeout_s: float = 15.0) -> int | None:
    """The version answering /v1/predict, once the replicas have swapped to `expected`."""
    deadline = time.monotonic() + timeout_s
    served = None
    while time.monotonic() < deadline:
        try:
            _, served = client.predict(probe, MODEL)
        except (ApiError, httpx.HTTPError):  # not ready yet: no production version loaded
            served = None
        if served == expected:
            break
        time.sleep(0.1)
    return served


def _print_site(console: Console, o: SiteOutcome, seconds: float) -> None:
    table = Table(title=f"site {o.site}  (batch {o.batch_id[:12]}, {seconds:.1f} s)", title_justify="left")
    for col in ("drift", "version", "gate", "serving"):
        table.add_column(col)
    verdict = {"promoted": "[green]passed, promoted[/]", "rejected": "[red]rejected[/]"}.get(o.status, o.status)
    table.add_row(o.drift, f"v{o.version}" if o.version else "-", verdict, f"v{o.serving}" if o.serving else "-")
    console.print(table)
    for r in o.retried:
        console.print(f" v{r['rejected']} forgot an earlier site and was rejected; retrained with ewc_lambda "
                      f"{r['ewc_lambda']:g}")
    if o.gate_lines:
        gates = Table(show_header=True, box=None, padding=(0, 1))
        for col in ("held-out site", "n", "cand. acc", "prod. acc", "lower bound", "ok", "T", "ECE raw/cal."):
            gates.add_column(col)
        for line in o.gate_lines:
            prod = line["production_accuracy"]
            bound = line["lower_bound"]
            cal = o.calibration.get(line["site"])
            gates.add_row(line["site"] + (" (new)" if line["new_site"] else ""), str(line["samples"]),
                          f"{line['candidate_accuracy']:.3f}", "-" if prod is None else f"{prod:.3f}",
                          "-" if bound is None else f"{bound:+.3f}", "yes" if line["passed"] else "[red]no[/]",
                          f"{cal['temperature']:.2f}" if cal else "-",
                          f"{cal['ece']:.3f}/{cal['ece_calibrated']:.3f}" if cal else "-")
        console.print(gates)

"""What the console pages show, read from the registry in as few round trips as the page allows.

Each function returns plain dicts for one page's template; the figures are the ones the JSON API gives
(the browser tests compare them), only arranged for reading.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from clreg.learner.operating import OperatingPoint, operating_point
from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.events import EventLog
from clreg.registry.findings import GateReport, SiteCalibration
from clreg.registry.locked import overlaid
from clreg.registry.readiness import assess
from clreg.registry.records import BatchStatus, VersionView
from clreg.registry.shadow import Shadows
from clreg.registry.status import waiting_batches
from clreg.registry.store import RedisRegistry
from clreg.serving.charts import heatmap, line_chart

DAY_S = 86400.0
QUEUE_DONE = 10  # finished batches shown under the active ones


def when(at: float | None) -> str:
    """A time as ops read it in a table (UTC)."""
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def models(reg: RedisRegistry, events: EventLog) -> list[dict[str, Any]]:
    """Per model: production version, last promotion, alerts in the last day, batches waiting and in flight."""
    recent = Counter(a.model for a in events.alerts(since=time.time() - DAY_S, count=100_000))
    ids = {i for i, _ in reg.batches.active()}
    out = []
    for name in reg.list_models():
        history = reg.alias_history(name)
        active = sum(b.id in ids for b in reg.batches.of_model(name)) if ids else 0
        out.append({"name": name, "production": reg.resolve(name), "last": history[-1] if history else None,
                    "alerts": recent[name], "pending": len(reg.batches.pending(name)), "active": active})
    return out


def _matrix(views: list[VersionView], gates: dict[str, GateReport]) -> tuple[str, dict[tuple[str, str], float]]:
    """The accuracy matrix (version x site) from the gate reports, as a heatmap and as numbers."""
    values: dict[tuple[str, str], float] = {}
    sites: list[str] = []
    rows = []
    for view in views:
        gate = gates.get(view.gate_report_id or "")
        if gate is None:
            continue
        rows.append(f"v{view.version.number}")
        for line in gate.sites:
            values[(rows[-1], line.site)] = line.candidate_accuracy
            if line.site not in sites:
                sites.append(line.site)
    return heatmap("held-out accuracy of each version (row) at each site (column), from its gate report",
                   rows, sites, values), values


def _drift_chart(reports: list[Any]) -> str:
    """Each site's drifted share of feature columns over time (x: first to last check)."""
    if not reports:
        return ""
    first, last = reports[0].created_at, reports[-1].created_at
    span = max(last - first, 1e-9)
    series: dict[str, list[tuple[float, float]]] = {}
    for r in reports:
        series.setdefault(r.site, []).append(((r.created_at - first) / span, r.drifted_share))
    return line_chart(f"drifted share of feature columns, {when(first)} to {when(last)}", "time", "drifted share",
                      series, dots=len(reports) < 3)


def model(reg: RedisRegistry, name: str) -> dict[str, Any]:
    """One model: versions (newest first) with gate verdicts, alias history, accuracy matrix, drift, queue."""
    record = reg.get_model(name)
    views = reg.list_versions(name)
    gates = reg.reports.gates([v.gate_report_id for v in views if v.gate_report_id])
    chart, matrix = _matrix(views, gates)
    drift = reg.reports.drift(name, limit=200)
    versions = [{"number": v.version.number, "status": v.status.value, "aliases": v.aliases,
                 "created": when(v.version.created_at), "sites": v.version.lineage.sites,
                 "gate": gates.get(v.gate_report_id or ""), "gate_notes": gate_notes(gates.get(v.gate_report_id or "")),
                 "shadow": _shadow(v.shadow)} for v in reversed(Shadows(reg).attach(name, views))]
    return {"model": record, "production": reg.resolve(name), "versions": versions,
            "history": list(reversed(reg.alias_history(name))), "matrix_svg": chart, "matrix": matrix,
            "drift_svg": _drift_chart(drift), "drift": list(reversed(drift))[:50], "queue": queue(reg, name)}


def gate_notes(gate: GateReport | None) -> str:
    """What a gate report judged by and what it could not see: the sites whose held-out sets are too small to
    distinguish its tolerance, each with how many more labelled images would let it."""
    if gate is None:
        return ""
    text = f"judged by {gate.metric or 'accuracy'}"
    if gate.too_small:
        more = {line.site: line.samples_needed for line in gate.sites}
        sites = ", ".join(s if more.get(s) is None else f"{s} (about {more[s]} more labelled images)"
                          for s in gate.too_small)
        text += f"; held-out sets too small to see a change of {gate.tolerance:.3f}: {sites}"
    if gate.pooled_only:
        text += (f"; judged only with the others (a drop of {gate.site_tolerance or 0:.3f} is within "
                 f"{(gate.min_images or 1) - 1} images there): {', '.join(gate.pooled_only)}")
    return text


def _shadow(figures: dict[str, Any] | None) -> str:
    """A version's shadow cell (from its summary, see Shadows.attach): its agreement with production over the
    requests it was mirrored on, and whether it is mirrored now."""
    if not figures:
        return ""
    text = "" if figures["agreement"] is None else \
        f"agreement {100 * figures['agreement']:.1f}% over {figures['requests']} requests"
    return f"mirrored now{': ' + text if text else ''}" if figures["active"] else text


def queue(reg: RedisRegistry, name: str) -> list[dict[str, Any]]:
    """The model's batches still in the pipeline, then the last few that reached a verdict, newest first."""
    batches = sorted(reg.batches.of_model(name), key=lambda b: b.created_at, reverse=True)
    active = dict(reg.batches.active())
    shown = [b for b in batches if b.id in active] + [b for b in batches if b.id not in active][:QUEUE_DONE]
    out = []
    for b in shown:
        state = active.get(b.id) or reg.batches.state(b.id)
        out.append({"id": b.id, "site": b.site, "samples": b.samples, "status": state.status.value,
                    "detail": state.detail, "version": state.version, "updated": when(state.updated_at),
                    "done": state.status in (BatchStatus.PROMOTED, BatchStatus.REJECTED, BatchStatus.FAILED)})
    return out


def sites(reg: RedisRegistry, artifacts: ArtifactStore) -> list[dict[str, Any]]:
    """Per site and model: prevalence, calibration under the production version, threshold, readiness."""
    records = reg.sites()
    names = [s.name for s in records]
    rows = []
    for m in reg.list_models():
        counts, record = reg.batches.site_counts(m, names), reg.get_model(m)
        version = reg.version_by_alias(m)
        waiting = Counter(w.site for w in waiting_batches(reg, m))
        calibration = version_calibration(artifacts, version) if version else None
        for site in records:
            fit = calibration.sites.get(site.name) if calibration else None
            if site.name not in counts and fit is None:
                continue
            c = counts.get(site.name)
            judged = overlaid(reg, calibration, m, version.number) if version else None  # locked sets first
            ready = assess(site.name, judged, record.readiness, record.task_metric) if version else None
            rows.append({"site": site.name, "model": m, "version": version.number if version else None,
                         "learnt": bool(version and site.name in version.lineage.sites), "waiting": waiting[site.name],
                         "prevalence": _prevalence(c.prevalence) if c else "", "samples": c.samples if c else None,
                         "threshold": site.threshold, "fit": fit, "point": _point(fit, site.threshold),
                         "validated": ready.validated if ready else None})
    return rows


def _prevalence(shares: list[float]) -> str:
    """A binary site's positive share; for more classes, the largest class's share."""
    if len(shares) == 2:
        return f"{shares[1]:.3f}"
    return f"{len(shares)} classes, largest {max(shares):.3f}" if shares else ""


def _point(fit: SiteCalibration | None, threshold: float | None) -> OperatingPoint | None:
    """A binary site's operating point at its threshold (0.5 when unset) on its calibrated held-out scores."""
    if fit is None or fit.scores is None or fit.labels is None:
        return None
    return operating_point(np.array(fit.scores), np.array(fit.labels), 0.5 if threshold is None else threshold)


def alerts(events: EventLog, model: str | None, site: str | None, kind: str | None,
           limit: int = 200) -> list[dict[str, Any]]:
    """The newest alerts first, filtered as /v1/alerts filters them."""
    found = events.alerts(model, 0.0, count=100_000, site=site, kind=kind)[-limit:]
    return [{"at": when(a.at), "model": a.model, "kind": a.kind, "site": a.data.get("site", ""),
             "summary": a.data.get("reason") or a.data.get("message") or _summary(a.data), "id": a.id}
            for a in reversed(found)]


def _summary(data: dict[str, Any]) -> str:
    keep = {k: v for k, v in data.items() if k not in ("site",) and not isinstance(v, (list, dict))}
    return ", ".join(f"{k}={v}" for k, v in list(keep.items())[:5])

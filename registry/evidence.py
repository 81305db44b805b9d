"""The evidence pack of a model up to one version: the records laid out along the headings of a Predetermined Change
Control Plan (FDA final guidance, December 2024), from the first version to the one asked for.

1. Description of the modifications: every version, what it changed.
2. Modification protocol: the protocol's revisions; data management (batches, digests, locked sets); re-training (the
   candidate search); performance evaluation (gate and locked-set figures against the acceptance criteria,
   calibration); update procedures (approvals, production moves, release notes); real-world monitoring (drift
   checks, alerts, shadow agreement).
3. Impact assessment: per version, each earlier site's change with its bound against the tolerance, and the sites
   whose readiness it gained or lost.
4. Traceability: per version, every artifact digest, batch id, gate report and protocol revision.

Every figure is a registry.release Figure (value, printed text, source route, path in its answer, record id or digest):
the JSON lists them all under `figures`, the HTML page links each to its source, and a test compares each with the API.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.records import ModelVersion, now
from clreg.registry.release import Sources, release_note
from clreg.registry.store import RedisRegistry

HEADINGS = ("Description of the modifications", "Modification protocol", "Impact assessment",
            "Version control and traceability")


def pack(registry: RedisRegistry, artifacts: ArtifactStore, events: EventLog, name: str, upto: int) -> dict[str, Any]:
    """The evidence pack of `name` from version 1 to `upto` (NotFound for a model or version that does not exist)."""
    model = registry.get_model(name)
    registry.get_version(name, upto)
    src = Sources(registry, artifacts, events, model)
    views = [v for v in registry.list_versions(name) if v.version.number <= upto]
    notes = [release_note(src, v) for v in views]
    learnt = {b["id"] for n in notes for b in n["data"]["batches"]}
    return {"model": name, "version": upto, "generated_at": now(), "headings": list(HEADINGS),
            "device": {"name": model.name, "factory": model.factory, "input": model.input.model_dump(mode="json"),
                       "metric": model.task_metric, "created_at": model.created_at},
            "modifications": [{k: n[k] for k in ("version", "status", "parent", "summary", "created_at")}
                              | {"sites_added": n["data"]["sites_added"]} for n in notes],
            "protocol": _protocol(src), "locked_sets": _locked_sets(src),
            "monitoring": _monitoring(src, learnt, notes),
            "impact": [_impact(n, {m["version"]: m for m in notes}) for n in notes],
            "traceability": [_trace(v.version, n) for v, n in zip(views, notes, strict=True)],
            "release_notes": notes, "figures": src.figures.items}


def _protocol(src: Sources) -> dict[str, Any]:
    """Every revision (who, when, why, what changed) and the acceptance criteria of the current one, as figures."""
    revisions = src.protocols.all(src.model.name)
    if not revisions:
        return {"current": None, "revisions": [], "criteria": {}}
    current, route, at = revisions[-1], f"/v1/models/{src.model.name}/protocol", f"revisions.{len(revisions) - 1}"
    record = f"{src.model.name} protocol revision {current.revision}"
    criteria = {f"gate.{k}": src.figures.add(f"protocol.gate.{k}", current.gate.get(k), route, f"{at}.gate.{k}",
                                             record)
                for k in ("tolerance", "site_tolerance", "forgetting_budget", "confidence") if k in current.gate}
    criteria |= {f"readiness.{k}": src.figures.add(f"protocol.readiness.{k}", getattr(current.readiness, k), route,
                                                   f"{at}.readiness.{k}", record)
                 for k in ("accuracy_floor", "metric_floor", "ece_limit", "min_positives", "min_negatives")}
    criteria["approvers needed"] = src.figures.add("protocol.approval.approvers", current.approval.approvers,
                                                     route, f"{at}.approval.approvers", record)
    return {"current": current.model_dump(mode="json"), "criteria": criteria,
            "revisions": [{k: p.model_dump(mode="json")[k] for k in ("revision", "who", "reason", "changed", "at")}
                          for p in revisions]}


def _locked_sets(src: Sources) -> dict[str, Any]:
    return {site: {"digest": d, "batches": src.locked.sites()[site]} for site, d in src.locked.digests().items()}


def _monitoring(src: Sources, learnt: set[str], notes: list[dict[str, Any]]) -> dict[str, Any]:
    """Drift checks of the batches learnt, alerts by kind until now, shadow agreement per version."""
    drift = []
    for report in src.registry.reports.drift(src.model.name, limit=10_000):
        if report.batch_id not in learnt:
            continue
        share = src.figures.add(f"drift.{report.id}.drifted_share", report.drifted_share, f"/v1/drift/{report.id}",
                                "drifted_share", report.id)
        drift.append({"report": report.id, "site": report.site, "batch": report.batch_id, "drift": report.drift,
                      "drifted_share": share, "reference_version": report.reference_version, "at": report.created_at})
    alerts = Counter(a.kind for a in src.events.alerts(src.model.name, count=100_000))
    return {"drift": drift, "alerts": dict(sorted(alerts.items())),
            "shadow": {n["version"]: n["shadow"] for n in notes if n["shadow"]}}


def _impact(note: dict[str, Any], notes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What the version changed for the sites before it: each earlier site's paired change against the tolerance,
    and readiness gained or lost against its parent (under the current rules)."""
    gate, parent = note["gate"], notes.get(note["parent"] or 0)
    earlier = [line for line in (gate["sites"] if gate else []) if not line["new_site"]]
    ready = {s: r["validated"] for s, r in note["readiness"].items()}
    before = {s: r["validated"] for s, r in parent["readiness"].items()} if parent else {}
    worse = [line["site"] for line in earlier if not line["passed"]]
    return {"version": note["version"], "parent": note["parent"], "status": note["status"],
            "earlier_sites": [{k: line[k] for k in ("site", "delta", "lower_bound", "passed")} for line in earlier],
            "tolerance": gate["tolerance"] if gate else None,
            "validated_gained": sorted(s for s, ok in ready.items() if ok and not before.get(s)),
            "validated_lost": sorted(s for s, ok in before.items() if ok and not ready.get(s)),
            "risk": (f"worse beyond the tolerance at {', '.join(worse)}" if worse else
                     "no earlier site worse beyond the tolerance") if gate else "not gated"}


def _trace(version: ModelVersion, note: dict[str, Any]) -> dict[str, Any]:
    """What identifies the version and everything it rests on: artifact digests, batches, reports, requests."""
    return {"version": version.number, "artifacts": dict(sorted(version.artifacts.items())),
            "batches": version.lineage.batch_ids, "gate_report": note["gate"]["report"] if note["gate"] else None,
            "protocol_revision": version.lineage.protocol, "parent": version.lineage.parent,
            "code_version": version.lineage.code_version, "seed": version.lineage.seed,
            "requests": [r["id"] for r in note["approvals"]], "history_lines": [m["index"] for m in note["moves"]]}

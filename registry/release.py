"""A version's release note, generated from the records, with the operator's own text.

    {p}:model:{m}:notes     hash  version -> Note JSON (the operator's text: who wrote it, when)

The note says what data the version added (batches, samples, prevalence, digests), what the candidate search chose
and why, its gate figures and its locked-set figures with their intervals against the protocol's acceptance
criteria, its calibration, its shadow agreement, readiness per site, who approved (or declined) it and every move of
production to it. Every figure is a `Figure`: its value, the text printed for it, and the record it came from (the
API route that answers it, the path of the value in that answer, and the record's id or digest), so the evidence pack
(registry/evidence.py) links each figure to its source and a test can compare each with the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from clreg.registry.approvals import Approvals
from clreg.registry.artifacts import Artifact, ArtifactStore, version_calibration
from clreg.registry.canary import Canaries
from clreg.registry.connection import translated
from clreg.registry.events import EventLog
from clreg.registry.findings import Calibration, GateReport
from clreg.registry.locked import LockedSets
from clreg.registry.protocol import Protocols, standing
from clreg.registry.readiness import assess
from clreg.registry.records import Model, Record, VersionView, check_name, now, parse
from clreg.registry.shadow import Shadows
from clreg.registry.store import RedisRegistry


class Note(Record):
    """The operator's own text in a version's release note."""

    text: str = Field(min_length=1, max_length=20_000)
    who: str
    at: float = Field(default_factory=now)


class Notes:
    def __init__(self, registry: RedisRegistry, model: str) -> None:
        self._reg = registry
        self._key = registry.key("model", check_name(model), "notes")

    @translated
    def put(self, version: int, note: Note) -> None:
        self._reg.r.hset(self._key, int(version), note.model_dump_json())

    @translated
    def get(self, version: int) -> Note | None:
        raw = self._reg.r.hget(self._key, int(version))
        return None if raw is None else parse(Note, raw)


def text(value: Any) -> str:
    """A figure as the pack prints it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


@dataclass
class Figures:
    """Every figure a note or a pack prints, each with the record it came from."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, value: Any, source: str, pointer: str, record: str) -> dict[str, Any]:
        """A figure: `value` is found at `pointer` (dotted; list items by index) in the JSON `source` answers."""
        figure = {"key": key, "value": value, "text": text(value), "source": source, "pointer": pointer,
                  "record": record}
        self.items.append(figure)
        return figure


@dataclass
class Sources:
    """The stores a note reads, and what every note of one model shares (read once)."""

    registry: RedisRegistry
    artifacts: ArtifactStore
    events: EventLog
    model: Model
    figures: Figures = field(default_factory=Figures)

    def __post_init__(self) -> None:
        name = self.model.name
        self.requests = Approvals(self.registry, self.events).all(name)
        self.locked = LockedSets(self.registry, name)
        self.log = self.registry.alias_history(name, moves_only=False)
        self.protocols = Protocols(self.registry, self.events)
        self.notes = Notes(self.registry, name)
        self.shadows = Shadows(self.registry)

    def route(self, number: int) -> str:
        return f"/v1/models/{self.model.name}/versions/{number}"


def release_note(src: Sources, view: VersionView) -> dict[str, Any]:
    """The release note of one version (its figures also go to `src.figures`)."""
    version, number = view.version, view.version.number
    gate = src.registry.reports.get_gate(view.gate_report_id) if view.gate_report_id else None
    calibration = version_calibration(src.artifacts, version) if Artifact.CALIBRATION.value in version.artifacts \
        else None
    note = src.notes.get(number)
    out = {"version": number, "status": view.status.value, "created_at": version.created_at,
           "parent": version.lineage.parent, "sites": version.lineage.sites,
           "protocol": standing(src.protocols, src.model.name, version.lineage.protocol),
           "data": _data(src, view), "search": _search(src, view), "gate": _gate(src, number, gate),
           "locked": _locked(src, number), "calibration": _calibration(src, number, calibration),
           "readiness": _readiness(src, number, calibration), "shadow": _shadow(src, view),
           "canary": _canary(src, number),
           "approvals": _approvals(src, number), "moves": _moves(src, number),
           "note": note.model_dump(mode="json") if note else None}
    return {**out, "summary": summary(out)}


def _data(src: Sources, view: VersionView) -> dict[str, Any]:
    """The batches the version learnt (its own, not its parent's), per batch and per site."""
    batches: list[dict[str, Any]] = []
    for batch_id in view.version.lineage.batch_ids:
        batch, route = src.registry.batches.get(batch_id), f"/v1/batches/{batch_id}"
        prevalence = [round(c / batch.samples, 4) for c in batch.class_counts]
        batches.append({"id": batch_id, "site": batch.site, "artifact": batch.artifact, "prevalence": prevalence,
                        "samples": src.figures.add(f"v{view.version.number}.batch.{batch_id[:12]}.samples",
                                                   batch.samples, route, "samples", batch_id),
                        "class_counts": batch.class_counts, "heldout": len(batch.heldout_index)})
    parent = src.registry.get_version(src.model.name, view.version.lineage.parent) \
        if view.version.lineage.parent else None
    added = [s for s in view.version.lineage.sites if parent is None or s not in parent.lineage.sites]
    return {"batches": batches, "sites_added": added,
            "samples": sum(b["samples"]["value"] for b in batches)}


def _search(src: Sources, view: VersionView) -> dict[str, Any]:
    """What the candidate search tried, what it chose and why (the best mean validation score)."""
    lines, route = view.version.lineage.search, src.route(view.version.number)
    out = []
    for i, line in enumerate(lines):
        score = src.figures.add(f"v{view.version.number}.search.{i}.score", line.get("score"), route,
                                f"version.lineage.search.{i}.score", f"{src.model.name}/v{view.version.number}")
        out.append({"settings": line.get("settings", {}), "chosen": line.get("chosen", False), "score": score,
                    "metric": line.get("metric"), "error": line.get("error")})
    chosen = next((c for c in out if c["chosen"]), None)
    why = (f"candidate {out.index(chosen) + 1} of {len(out)} had the best mean validation {chosen['metric']} "
           f"({chosen['score']['text']}), on data carved from the update's own training samples and the replay "
           "memory (never a held-out or locked sample)") if chosen else "no search recorded (not made by an update)"
    return {"candidates": out, "why": why, "settings": view.version.lineage.train_settings}


def _gate(src: Sources, number: int, gate: GateReport | None) -> dict[str, Any] | None:
    """The gate's verdict and each site's line: candidate and production in the task metric, the paired change's
    lower bound against the tolerance (the protocol's acceptance criterion)."""
    if gate is None:
        return None
    route, keys = src.route(number), ("candidate_value", "production_value", "delta", "lower_bound")
    sites = []
    for i, line in enumerate(gate.sites):
        figs = {k: src.figures.add(f"v{number}.gate.{line.site}.{k}", getattr(line, k), route,
                                   f"gate_report.sites.{i}.{k}", gate.id) for k in keys}
        sites.append({"site": line.site, "new_site": line.new_site, "passed": line.passed, "samples": line.samples,
                      "metric": line.metric or "accuracy", **figs})
    return {"report": gate.id, "passed": gate.passed, "reasons": gate.reasons, "metric": gate.metric or "accuracy",
            "tolerance": gate.tolerance, "site_tolerance": gate.site_tolerance, "confidence": gate.confidence,
            "sites": sites}


def _locked(src: Sources, number: int) -> dict[str, Any]:
    """The version on each locked set: the metric with its interval, against the readiness rules."""
    route, out = f"/v1/models/{src.model.name}/locked", {}
    for site, score in src.locked.of_version(number).items():
        f = score.figures
        pointer = f"scores.{number}.{site}.figures"

        def fig(name: str, value: Any, at: str, *, _p: str = pointer, _d: str = score.digest,
                _s: str = site) -> dict[str, Any]:
            return src.figures.add(f"v{number}.locked.{_s}.{name}", value, route, f"{_p}.{at}", _d)

        interval = f.metric_interval or (None, None)
        out[site] = {"digest": score.digest, "batches": score.batch_ids, "learnt": score.learnt, "metric": f.metric,
                     "samples": fig("samples", f.samples, "samples"),
                     "value": fig("value", f.metric_value, "metric_value"),
                     "low": fig("low", interval[0], "metric_interval.0"),
                     "high": fig("high", interval[1], "metric_interval.1"),
                     "baseline": fig("baseline", f.metric_baseline, "metric_baseline"),
                     "accuracy": fig("accuracy", f.accuracy, "accuracy"),
                     "ece": fig("ece", f.ece_calibrated, "ece_calibrated")}
    return out


def _calibration(src: Sources, number: int, calibration: Calibration | None) -> dict[str, Any]:
    if calibration is None:
        return {}
    route, record = src.route(number), f"calibration of {src.model.name}/v{number}"
    return {site: {k: src.figures.add(f"v{number}.calibration.{site}.{k}", getattr(fit, k), route,
                                      f"calibration.sites.{site}.{k}", record)
                   for k in ("temperature", "samples", "ece", "ece_calibrated")}
            for site, fit in calibration.sites.items()}


def _readiness(src: Sources, number: int, calibration: Calibration | None) -> dict[str, Any]:
    """Each site's readiness under the current rules: judged on its locked set where it has one."""
    judged = src.locked.overlay(calibration, number)
    locked = set(src.locked.of_version(number))
    sites = sorted(set(judged.sites) if judged else set())
    out = {}
    for s in sites:
        verdict = assess(s, judged, src.model.readiness, src.model.task_metric)
        reasons = [r.replace("held-out", "locked-set") for r in verdict.reasons] if s in locked else verdict.reasons
        out[s] = {"site": s, "validated": verdict.validated, "reasons": reasons,
                  "judged_on": "locked" if s in locked else "heldout"}
    return out


def _shadow(src: Sources, view: VersionView) -> dict[str, Any] | None:
    attached = src.shadows.attach(src.model.name, [view])[0].shadow
    if not attached:
        return None
    agreement = src.figures.add(f"v{view.version.number}.shadow.agreement", attached["agreement"],
                                src.route(view.version.number), ".".join(("shadow", "agreement")),  # a path, no event
                                f"shadow of v{view.version.number}")
    return {**attached, "agreement": agreement}


def _canary(src: Sources, number: int) -> dict[str, Any]:
    """What the version did as the canary, per site: requests answered, errors, its label-free estimate."""
    route = f"/v1/models/{src.model.name}/canary?version={number}"
    return {site: {k: src.figures.add(f"v{number}.canary.{site}.{k}", getattr(c, k), route, f"sites.{site}.{k}",
                                      f"canary of v{number}") for k in ("requests", "errors", "estimate")}
            for site, c in Canaries(src.registry).figures(src.model.name, number).items()}


def _approvals(src: Sources, number: int) -> list[dict[str, Any]]:
    """The approval requests for this version, each decision a figure (who, and the verdict)."""
    route, out = f"/v1/models/{src.model.name}/approvals", []
    for i, request in enumerate(src.requests):
        if request.version != number:
            continue
        decisions = [{"approver": src.figures.add(f"v{number}.{request.id}.{j}.approver", d.approver, route,
                                                  f"{i}.decisions.{j}.approver", request.id),
                      "verdict": d.verdict, "reason": d.reason, "at": d.at} for j, d in enumerate(request.decisions)]
        out.append({"id": request.id, "kind": request.kind, "requester": request.requester, "reason": request.reason,
                    "status": request.status, "needs": request.needs, "decisions": decisions})
    return out


def _moves(src: Sources, number: int) -> list[dict[str, Any]]:
    """Every line of the alias history about this version (moves to it, and approval steps)."""
    return [{**line.model_dump(mode="json"), "index": i} for i, line in enumerate(src.log)
            if line.to_version == number]


def summary(note: dict[str, Any]) -> str:
    """The note's first paragraph, in words."""
    n, data, gate = note["version"], note["data"], note["gate"]
    parts = [f"Version {n} ({note['status']}) learnt {data['samples']} samples in {len(data['batches'])} batch"
             f"{'es' if len(data['batches']) != 1 else ''}"
             + (f", adding site{'s' if len(data['sites_added']) > 1 else ''} {', '.join(data['sites_added'])}"
                if data["sites_added"] else "") + (f", from version {note['parent']}." if note["parent"] else ".")]
    if gate:
        parts.append(f"Its gate ({gate['metric']}, tolerance {gate['tolerance']:g}) "
                     + ("passed." if gate["passed"] else f"failed: {'; '.join(gate['reasons'])}."))
    decided = [d for r in note["approvals"] for d in r["decisions"]]
    if decided:
        parts.append("Decided by " + "; ".join(f"{d['approver']['value']} ({d['verdict']}: {d['reason']})"
                                                for d in decided) + ".")
    if note["protocol"]["older"]:
        parts.append(f"Made under protocol revision {note['protocol']['revision']}; the protocol has changed since "
                     f"({', '.join(note['protocol']['changed_since'])}).")
    return " ".join(parts)

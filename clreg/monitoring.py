"""Drift step: features of a batch against the production version's reference, through Evidently; the
findings stored as a DriftReport, and a drift alert raised on drift."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clreg import faults
from clreg.context import DriftStep, Stores
from clreg.monitor.drift import DriftCheck, check_drift, save_snapshot
from clreg.monitor.errors import MonitorError
from clreg.monitor.features import Reference, batch_features
from clreg.reference import embed_fn, load_reference
from clreg.registry.artifacts import Artifact
from clreg.registry.findings import ColumnDrift, DriftReport
from clreg.registry.records import Batch, Model, ModelVersion

log = logging.getLogger(__name__)


def check_batch(stores: Stores, step: DriftStep, model: Model, batch: Batch,
                production: ModelVersion | None) -> DriftReport | None:
    """Store a DriftReport (+ Evidently HTML) and raise an alert on drift; None before any production model."""
    if production is None or Artifact.REFERENCE not in production.artifacts:
        return None
    x, y = stores.arrays(model, batch)
    reference, current = features(stores, model, production, x, y)
    return check(stores, step, reference, current, DriftReport(
        id=batch_report_id(batch, production), model=model.name, site=batch.site, batch_id=batch.id,
        reference_version=production.number, samples=len(current)))


def check(stores: Stores, step: DriftStep, reference: Reference, current: pd.DataFrame,
          subject: DriftReport) -> DriftReport:
    """Check `current` against `reference` for `subject` (a report's id, model, site, batch and reference
    version) and record what was found."""
    found = check_drift(reference, current, report_id=subject.id, model=subject.model, site=subject.site,
                        batch_id=subject.batch_id, cfg=step.cfg)
    return record(stores, step, found, DriftReport(**{**subject.model_dump(exclude={"created_at"}),
                                                      **dataclasses.asdict(found.findings)}))


def features(stores: Stores, model: Model, production: ModelVersion, x: np.ndarray,
             y: np.ndarray | None) -> tuple[Reference, pd.DataFrame]:
    """The production reference and the feature table of `x` (and labels, when known) against it."""
    reference = load_reference(stores.artifacts, production)
    net = stores.module(model, production.artifacts[Artifact.WEIGHTS])
    return reference, batch_features(embed_fn(net), reference, x, y)


def new_report_id() -> str:
    return f"d-{uuid.uuid4().hex[:16]}"


def batch_report_id(batch: Batch, reference: ModelVersion) -> str:
    """One report per batch and reference version: a replayed check finds the report of record stored."""
    return f"d-{batch.id[:16]}-v{reference.number}"


def record(stores: Stores, step: DriftStep, found: DriftCheck, report: DriftReport) -> DriftReport:
    """Store a check (its report, the gzip-compressed HTML page, the workspace snapshot), log it, and alert on
    drift (the alert event reaches webhook subscribers through the daemon's dispatcher)."""
    # Evidently's page inlines its JS bundle (~4.5 MB); gzip keeps ~1/4 of it. The gateway sends it as is.
    html = gzip.compress(found.html.encode(), compresslevel=6, mtime=0)
    report = report.model_copy(update={"html_artifact": stores.artifacts.put(html)})
    report = stores.registry.reports.put_drift(report)  # the first check of record, where a replay checks again
    faults.reach("during_drift")  # stored, its events and alert not yet
    _snapshot(step.workspace, report, found.snapshot)
    # once per report, though a replay after a crash runs the check again
    stores.events.append_once(report.model, "drift.checked", ("report",), batch=report.batch_id, site=report.site,
                              report=report.id, drift=report.drift, drifted_share=report.drifted_share)
    if report.drift:
        payload = alert_payload(report, f"{step.public_url}/v1/drift/{report.id}?format=html")
        stores.events.append_once(report.model, "drift.alert", ("report_id",),
                                  **{k: v for k, v in payload.items() if k not in ("model", "kind")})
    return report


def _snapshot(workspace: Path, report: DriftReport, snapshot: object) -> None:
    """Best effort: the workspace is for `evidently ui`; the report of record is already stored."""
    try:
        save_snapshot(workspace, report.model, report.site, snapshot)
    except MonitorError as e:
        log.warning("evidently workspace snapshot not saved: %s", e)


def _test(drift: ColumnDrift | None) -> dict[str, Any] | None:
    """One test's outcome for the alert."""
    if drift is None:
        return None
    return {"method": drift.method, "score": drift.score, "threshold": drift.threshold, "drifted": drift.drifted}


def _signals(report: DriftReport) -> list[str]:
    """Which tests found drift: "features" (per-column), "label" (prior shift), "embedding" (MMD)."""
    flags = {"features": report.feature_drift,
             "label": report.label_drift is not None and report.label_drift.drifted,
             "embedding": report.embedding_mmd is not None and report.embedding_mmd.drifted}
    return [name for name, flagged in flags.items() if flagged]


def top_columns(report: DriftReport, k: int = 5) -> list[str]:
    """The k drifted columns with the strongest evidence (the smallest scores: p-values), for alerts."""
    drifted = [c for c in report.columns if c.drifted]
    return [c.column for c in sorted(drifted, key=lambda c: c.score)[:k]]


def alert_payload(report: DriftReport, report_url: str) -> dict[str, Any]:
    """A drift alert (the `drift.alert` event's data; webhook subscribers receive it): the verdict, its
    strongest evidence and a link to the full report."""
    return {
        "kind": "drift",
        "model": report.model,
        "site": report.site,
        "batch_id": report.batch_id,
        "report_id": report.id,
        "reference_version": report.reference_version,
        "samples": report.samples,
        "verdict": "drift" if report.drift else "no_drift",
        "signals": _signals(report),
        "feature_drift": report.feature_drift,
        "top_features": top_columns(report),
        "drifted_share": report.drifted_share,
        "label_drift": _test(report.label_drift),
        "embedding_mmd": _test(report.embedding_mmd),
        "link": report_url,
        "created_at": report.created_at,
    }

"""Drift step: features of a batch against the production version's reference, through Evidently."""

from __future__ import annotations

import gzip
import logging
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from clreg.context import DriftStep, Stores
from clreg.monitor.alerts import alert_payload
from clreg.monitor.drift import DriftCheck, check_drift, save_snapshot
from clreg.monitor.errors import MonitorError
from clreg.monitor.features import Reference, batch_features
from clreg.reference import embed_fn, load_reference
from clreg.registry.artifacts import Artifact
from clreg.registry.findings import DriftReport
from clreg.registry.records import Batch, Model, ModelVersion

log = logging.getLogger(__name__)


def check_batch(stores: Stores, step: DriftStep, model: Model, batch: Batch,
                production: ModelVersion | None) -> DriftReport | None:
    """Store a DriftReport (+ Evidently HTML) and raise an alert on drift; None before any production model."""
    if production is None or Artifact.REFERENCE not in production.artifacts:
        return None
    x, y = stores.arrays(model, batch)
    reference, current = features(stores, model, production, x, y)
    check = check_drift(reference, current, report_id=batch_report_id(batch, production), model=model.name,
                        site=batch.site, batch_id=batch.id, reference_version=production.number, cfg=step.cfg)
    return record(stores, step, check)


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


def record(stores: Stores, step: DriftStep, check: DriftCheck) -> DriftReport:
    """Store a check (record, gzip-compressed HTML page, workspace snapshot), log it, and alert on drift (the
    alert event reaches webhook subscribers through the daemon's dispatcher)."""
    # Evidently's page inlines its JS bundle (~4.5 MB); gzip keeps ~1/4 of it. The gateway sends it as is.
    html = gzip.compress(check.html.encode(), compresslevel=6, mtime=0)
    report = check.report.model_copy(update={"html_artifact": stores.artifacts.put(html)})
    report = stores.registry.reports.put_drift(report)  # the first check of record, where a replay checks again
    _snapshot(step.workspace, report, check.snapshot)
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

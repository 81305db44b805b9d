"""Drift step: features of a batch against the production version's reference, through Evidently."""

from __future__ import annotations

import logging
import uuid

from clreg.context import Context
from clreg.learning import embed_fn, load_reference
from monitor.alerts import alert_payload, post_webhook
from monitor.drift import check_drift, save_snapshot
from monitor.errors import MonitorError
from monitor.features import batch_features
from registry.records import Batch, DriftReport, Model, ModelVersion

log = logging.getLogger(__name__)


def check_batch(ctx: Context, model: Model, batch: Batch, production: ModelVersion | None) -> DriftReport | None:
    """Store a DriftReport (+ Evidently HTML) and raise an alert on drift; None before any production model."""
    if production is None or "reference" not in production.artifacts:
        return None
    reference = load_reference(ctx, production)
    x, y = ctx.arrays(model, batch)
    current = batch_features(embed_fn(ctx.module(model, production.artifacts["weights"])), reference, x, y)
    report_id = f"d-{uuid.uuid4().hex[:16]}"
    check = check_drift(reference, current, report_id=report_id, model=model.name, site=batch.site,
                        batch_id=batch.id, reference_version=production.number, cfg=ctx.drift)
    report = check.report.model_copy(update={"html_artifact": ctx.artifacts.put(check.html.encode())})
    ctx.registry.put_drift_report(report)
    _snapshot(ctx, model, batch, check.snapshot)
    ctx.events.append(model.name, "drift.checked", batch=batch.id, site=batch.site, report=report.id,
                      drift=report.drift, drifted_share=report.drifted_share)
    if report.drift:
        payload = alert_payload(report, f"{ctx.public_url}/v1/drift/{report.id}?format=html")
        ctx.events.append(model.name, "drift.alert", **{k: v for k, v in payload.items() if k not in ("model", "kind")})
        if ctx.webhook.url:
            post_webhook(ctx.webhook, payload)
    return report


def _snapshot(ctx: Context, model: Model, batch: Batch, snapshot: object) -> None:
    """Best effort: the workspace is for `evidently ui`; the report of record is already stored."""
    try:
        save_snapshot(ctx.workspace, model.name, batch.site, snapshot)
    except MonitorError as e:
        log.warning("evidently workspace snapshot not saved: %s", e)

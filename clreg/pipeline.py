"""One batch through clreg: drift -> trigger -> learn -> register -> gate -> promote, in plain calls.

`process()` is called by the daemon for every ingest entry. It is safe to call twice for the same batch
(a crash between steps re-delivers the entry): each step looks at the batch's stored state first.
"""

from __future__ import annotations

import functools
import logging

from clreg.context import Context
from clreg.gating import gate
from clreg.learning import learn
from clreg.monitoring import check_batch
from learner.errors import LearnerError
from learner.train import TrainConfig
from monitor.errors import MonitorError
from registry.events import Lease
from registry.records import (
    Batch,
    BatchState,
    BatchStatus,
    DriftReport,
    GateReport,
    Model,
    ModelVersion,
    VersionStatus,
)

log = logging.getLogger(__name__)


def process(ctx: Context, batch_id: str) -> None:
    """Drift-check a received batch and, if it triggers, run one update for its model."""
    batch = ctx.registry.get_batch(batch_id)
    model = ctx.registry.get_model(batch.model)
    state = ctx.registry.batch_state(batch_id)
    if state.status is BatchStatus.RECEIVED:
        report = _drift(ctx, model, batch)
        ctx.registry.add_pending(model.name, batch.id)
        ctx.registry.set_batch_state(batch.id, BatchState(status=BatchStatus.DRIFT_CHECKED,
                                                          drift_report_id=report.id if report else None))
        if not _triggers(ctx, model, batch, report):
            return
    update(ctx, model)


def _drift(ctx: Context, model: Model, batch: Batch) -> DriftReport | None:
    try:
        return check_batch(ctx, model, batch, ctx.production(model.name))
    except MonitorError as e:  # a failed check must not block learning; ops see the failure
        ctx.events.append(model.name, "drift.failed", batch=batch.id, error=str(e))
        return None


def _triggers(ctx: Context, model: Model, batch: Batch, report: DriftReport | None) -> bool:
    """A new site, detected drift, or enough samples waiting."""
    production = ctx.production(model.name)
    if production is None:
        return True
    if ctx.trigger.on_new_site and batch.site not in production.lineage.sites:
        return True
    if ctx.trigger.on_drift and report is not None and report.drift:
        return True
    waiting = sum(ctx.registry.get_batch(b).samples for b in ctx.registry.pending(model.name))
    return waiting >= ctx.trigger.min_new_samples


def update(ctx: Context, model: Model) -> int | None:
    """Learn every pending batch of `model` in one candidate; the version promoted, or None.

    One update per model at a time (a Redis lease); batches that arrive meanwhile wait in the pending
    set and are coalesced into the next update.
    """
    lease = Lease(ctx.registry, model.name)
    if not lease.acquire():
        return None
    try:
        batches = [ctx.registry.get_batch(b) for b in ctx.registry.pending(model.name)]
        if not batches:
            return None
        with lease.kept_alive():  # training (and a retry) may outlast one lease
            return _update(ctx, model, sorted(batches, key=lambda b: b.created_at))
    finally:
        lease.release()


def _update(ctx: Context, model: Model, batches: list[Batch]) -> int | None:
    """Learn, gate, promote; a candidate rejected for forgetting an earlier site is retried with a stronger
    EWC penalty (lambda x retry factor, up to `forgetting_retries` times) before the batches are given up."""
    ids = [b.id for b in batches]
    production = ctx.production(model.name)
    ctx.events.append(model.name, "update.started", batches=ids, parent=production.number if production else None)
    train = ctx.train
    for attempt in range(ctx.gate.forgetting_retries + 1):
        outcome = _learn_and_gate(ctx, model, production, batches, train)
        if outcome is None:
            return None
        candidate, report = outcome
        if report.passed:
            return _promote(ctx, model, candidate, report, ids)
        final = attempt == ctx.gate.forgetting_retries or not _forgot(report)
        _reject(ctx, model, candidate, report, ids, final)
        if final:
            return None
        train = train.model_copy(update={"ewc_lambda": train.ewc_lambda * ctx.gate.retry_lambda_factor})
        ctx.events.append(model.name, "update.retrying", rejected=candidate.number, ewc_lambda=train.ewc_lambda,
                          batches=ids)
    return None


def _learn_and_gate(ctx: Context, model: Model, production: ModelVersion | None, batches: list[Batch],
                    train: TrainConfig) -> tuple[ModelVersion, GateReport] | None:
    """One candidate and its gate report; None when training failed (reported, batches given up)."""
    ids = [b.id for b in batches]
    _set_states(ctx, ids, BatchStatus.TRAINING)
    try:
        candidate = learn(ctx, model, production, batches, progress=functools.partial(_progress, ctx, ids),
                          train=train)
    except LearnerError as e:
        ctx.events.append(model.name, "update.failed", batches=ids, error=str(e))
        _set_states(ctx, ids, BatchStatus.FAILED, detail=str(e))
        ctx.registry.clear_pending(model.name, ids)
        return None
    ctx.events.append(model.name, "update.finished", version=candidate.number, seconds=candidate.lineage.timings)
    report = gate(ctx, model, candidate, production)
    _set_states(ctx, ids, BatchStatus.GATED, version=candidate.number)
    return candidate, report


def _forgot(report: GateReport) -> bool:
    """Whether the candidate failed on an earlier site (a stronger penalty can help), not only its new one."""
    return any(not line.passed and not line.new_site for line in report.sites)


def _reject(ctx: Context, model: Model, candidate: ModelVersion, report: GateReport, ids: list[str],
            final: bool) -> None:
    ctx.registry.set_status(model.name, candidate.number, VersionStatus.REJECTED, report.id)
    ctx.events.append(model.name, "gate.failed", version=candidate.number, reasons=report.reasons,
                      report=report.id)
    if final:
        _set_states(ctx, ids, BatchStatus.REJECTED, version=candidate.number, detail="; ".join(report.reasons))
        ctx.registry.clear_pending(model.name, ids)


def _promote(ctx: Context, model: Model, candidate: ModelVersion, report: GateReport, ids: list[str]) -> int:
    ctx.registry.set_status(model.name, candidate.number, VersionStatus.BLESSED, report.id)
    ctx.events.append(model.name, "gate.passed", version=candidate.number, report=report.id)
    change = ctx.registry.promote(model.name, candidate.number, who="daemon", reason=f"passed gate {report.id}")
    ctx.events.append(model.name, "alias.moved", alias="production", to=candidate.number, frm=change.from_version,
                      who="daemon", reason=change.reason)
    _set_states(ctx, ids, BatchStatus.PROMOTED, version=candidate.number)
    ctx.registry.clear_pending(model.name, ids)
    return candidate.number


def _progress(ctx: Context, ids: list[str], site: str, row: dict[str, float]) -> None:
    """Show a running update's epochs in its batches' state (GET /v1/batches/{id})."""
    _set_states(ctx, ids, BatchStatus.TRAINING,
                detail=f"site {site}: epoch {int(row['epoch'])}/{ctx.train.epochs}, loss {row['loss']:.4f}")


def _set_states(ctx: Context, ids: list[str], status: BatchStatus, version: int | None = None,
                detail: str = "") -> None:
    for batch_id in ids:
        previous = ctx.registry.batch_state(batch_id)
        ctx.registry.set_batch_state(batch_id, BatchState(
            status=status, version=version if version is not None else previous.version,
            drift_report_id=previous.drift_report_id, detail=detail))

"""One batch through clreg: drift -> trigger -> learn -> register -> gate -> promote, in plain calls.
(For a model with a shadow policy, promote is deferred: see clreg/shadowing.py.)

`process()` is called by the daemon for every ingest entry, and again for the same batch after any crash:
each step looks at what is stored first (`clreg.recovery`), so a replay from any point ends in the same
state, with no second alias move and no version left without a verdict. Registration and promotion are
fenced by the model's update lease: a process that lost its lease cannot write either.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from enum import Enum

from clreg import approving, canarying, faults, locking, protocols, recovery, shadowing
from clreg.context import Context
from clreg.gating import gate
from clreg.learner.errors import LearnerError, TrainingInterrupted
from clreg.learning import Learnt, answers_remotely, assemble, learn
from clreg.monitor.errors import MonitorError
from clreg.monitoring import check_batch
from clreg.registry import canary, promotion
from clreg.registry.errors import StoreUnavailable
from clreg.registry.findings import DriftReport, GateReport
from clreg.registry.leases import Lease, tool
from clreg.registry.records import (
    FINAL_BATCH,
    Batch,
    BatchState,
    BatchStatus,
    Incarnation,
    Model,
    ModelVersion,
    VersionStatus,
    VersionView,
)
from clreg.registry.shadow import Shadows

log = logging.getLogger(__name__)


class Outcome(Enum):
    DONE = "done"  # the batch has its verdict, or waits in the pending set by design: ack its entry
    DEFERRED = "deferred"  # another live process holds the model's update lease: keep the entry, try again


@dataclass(frozen=True)
class Worker:
    """The process running the pipeline: who holds the leases, and the event that asks it to stop."""

    me: Incarnation = field(default_factory=tool)  # a daemon's incarnation; this process as a tool by default
    stop: threading.Event = field(default_factory=threading.Event)
    lease_s: float = 60.0


def process(ctx: Context, worker: Worker, batch_id: str) -> Outcome:
    """Drift-check a received batch and, if it triggers, run one update for its model."""
    batch = ctx.registry.batches.get(batch_id)
    model = ctx.registry.get_model(batch.model)
    state = ctx.registry.batches.state(batch_id)
    if state.status in FINAL_BATCH:
        return Outcome.DONE
    if batch.locked:  # a locked test set: scored for every version, never drift-checked, pending or learnt
        locking.admit(ctx.stores, model, batch)
        return Outcome.DONE
    if state.status in (BatchStatus.RECEIVED, BatchStatus.DRIFT_CHECKED) and not _checked(ctx, model, batch, state):
        return Outcome.DONE
    return update(ctx, worker, model)


def _checked(ctx: Context, model: Model, batch: Batch, state: BatchState) -> bool:
    """Drift-check a received batch (once) and say whether it triggers an update; one production read serves
    both (the update reads its own, under its lease)."""
    production = ctx.stores.production(model.name)
    if state.status is BatchStatus.RECEIVED:
        faults.reach("after_receive")
        report = _drift(ctx, model, batch, production)
        ctx.registry.batches.add_pending(model.name, batch.id)
        state = BatchState(status=BatchStatus.DRIFT_CHECKED, drift_report_id=report.id if report else None)
        ctx.registry.batches.set_state(batch.id, state)
    return _triggers(ctx, batch, production, state.drift_report_id)


def _drift(ctx: Context, model: Model, batch: Batch, production: ModelVersion | None) -> DriftReport | None:
    try:
        return check_batch(ctx.stores, ctx.drift, model, batch, production)
    except MonitorError as e:  # a failed check must not block learning; ops see the failure
        ctx.events.append(model.name, "drift.failed", batch=batch.id, error=str(e))
        return None


def _triggers(ctx: Context, batch: Batch, production: ModelVersion | None, report_id: str | None) -> bool:
    """A new site, detected drift, or enough samples waiting."""
    if production is None:
        return True
    if ctx.trigger.on_new_site and batch.site not in production.lineage.sites:
        return True
    report: DriftReport | None = ctx.registry.reports.get_drift(report_id) if report_id else None
    if ctx.trigger.on_drift and report is not None and report.drift:
        return True
    waiting = sum(ctx.registry.batches.get(b).samples for b in ctx.registry.batches.pending(batch.model))
    return waiting >= ctx.trigger.min_new_samples


def update(ctx: Context, worker: Worker, model: Model) -> Outcome:
    """Learn every pending batch of `model` in one candidate, or finish the update a dead process left.

    One update per model at a time (a lease naming its holder; a dead holder's lease is taken over at
    once); batches that arrive meanwhile wait in the pending set and are coalesced into the next update.
    """
    lease = Lease(ctx.registry, model.name, worker.me, lease_s=worker.lease_s)
    if not lease.acquire():
        return Outcome.DEFERRED
    try:
        if lease.taken_from is not None:
            dead = lease.taken_from
            ctx.events.append(model.name, "update.taken_over", holder=dead.name, pid=dead.pid, host=dead.host)
        with lease.kept_alive():  # training (and a retry) may outlast one lease
            _update(ctx, worker, lease, model)
    finally:
        try:
            lease.release()
        except StoreUnavailable as e:  # Redis away: the lease runs out, or this process takes it back
            log.warning("update lease of %s not released: %s", model.name, e)
    return Outcome.DONE


def _update(ctx: Context, worker: Worker, lease: Lease, model: Model) -> None:
    """Learn, gate, promote; a candidate rejected for forgetting an earlier site is retried with a stronger
    EWC penalty (lambda x retry factor, up to `forgetting_retries` times) before the batches are given up."""
    mirrored = Shadows(ctx.registry).active(model.name)
    if mirrored is not None:  # batches wait for the mirrored candidate's verdict
        shadowing.resume(ctx.stores, model, mirrored)
        return
    if approving.blocking(ctx.stores, model.name) or canarying.running(ctx.stores, model.name):  # and approvers,
        return  # and a candidate answering a share of requests
    production = ctx.stores.production(model.name)
    batches = recovery.settle(ctx.stores, model.name, production)
    if not batches:
        return
    ids = [b.id for b in batches]
    made = recovery.attempts(ctx.stores, model.name, production, ids)
    recovery.abandon_strays(ctx.stores, model.name, keep={v.version.number for v in made})
    ctx.events.append(model.name, "update.resumed" if made else "update.started", batches=ids,
                      parent=production.number if production else None, candidates=[v.version.number for v in made])
    for attempt in range(ctx.gate.forgetting_retries + 1):
        prior = made[attempt] if attempt < len(made) else None
        outcome = _candidate(ctx, worker, lease, model, production, batches, _scale(ctx, attempt), prior)
        if outcome is None:
            return
        candidate, report = outcome
        decided = prior is not None and prior.status is not VersionStatus.CANDIDATE  # verdict already stored
        if report.passed:
            _promote(ctx, lease, model, candidate, report, ids, blessed=decided)
            return
        final = attempt == ctx.gate.forgetting_retries or not _forgot(report)
        _reject(ctx, model, candidate, report, ids, final, recorded=decided)
        if final:
            return
        ctx.events.append_once(model.name, "update.retrying", ("rejected",), rejected=candidate.number, batches=ids,
                               ewc_lambda=ctx.train.ewc_lambda * _scale(ctx, attempt + 1))
        faults.reach("after_retrying")


def _scale(ctx: Context, attempt: int) -> float:
    """How much the n-th attempt raises the protection of earlier sites: x retry factor per rejection."""
    return float(ctx.gate.retry_lambda_factor ** attempt)


def _candidate(ctx: Context, worker: Worker, lease: Lease, model: Model, production: ModelVersion | None,
               batches: list[Batch], scale: float,
               prior: VersionView | None) -> tuple[ModelVersion, GateReport] | None:
    """One gated candidate: the one an earlier process made (with its verdict, if it reached one) or a new one.

    None when training failed (reported, batches given up)."""
    if prior is not None:  # a crash may have come between its registration and the event saying so
        _finished(ctx, prior.version)
    if prior is not None and prior.gate_report_id and prior.status is not VersionStatus.CANDIDATE:
        return prior.version, ctx.registry.reports.get_gate(prior.gate_report_id)
    candidate = prior.version if prior is not None else _new(ctx, worker, lease, model, production, batches, scale)
    if candidate is None:
        return None
    locking.score(ctx.stores, model, [candidate])  # on every locked set, before anyone judges it
    report = gate(ctx.stores, ctx.gate, model, candidate, production)
    _set_states(ctx, [b.id for b in batches], BatchStatus.GATED, version=candidate.number)
    return candidate, report


def _new(ctx: Context, worker: Worker, lease: Lease, model: Model, production: ModelVersion | None,
         batches: list[Batch], scale: float) -> ModelVersion | None:
    """A new candidate: learn, assemble, register; None when training failed (reported, batches given up)."""
    learnt = _learn(ctx, worker, model, production, batches, scale)
    if learnt is None:
        return None
    version = assemble(ctx.stores, ctx.features, ctx.trigger.reference_samples, model, production, learnt,
                       remote=answers_remotely(ctx.search))
    return _register(ctx, lease, protocols.stamp(ctx, model, version))  # made under the protocol in force


def _learn(ctx: Context, worker: Worker, model: Model, production: ModelVersion | None,
           batches: list[Batch], scale: float) -> Learnt | None:
    """The candidate search as Ray tasks, its progress in the batches' state; None when training failed."""
    ids = [b.id for b in batches]
    _set_states(ctx, ids, BatchStatus.TRAINING)
    try:
        return learn(ctx.stores, ctx.train, ctx.search, model, production, batches, scale=scale,
                     progress=functools.partial(_progress, ctx, ids), stop=worker.stop)
    except TrainingInterrupted:
        _set_states(ctx, ids, BatchStatus.TRAINING, detail="stopped with the daemon; its next start resumes it")
        raise
    except LearnerError as e:
        ctx.events.append(model.name, "update.failed", batches=ids, error=str(e))
        _set_states(ctx, ids, BatchStatus.FAILED, detail=str(e))
        ctx.registry.batches.clear_pending(model.name, ids)
        return None


def _register(ctx: Context, lease: Lease, version: ModelVersion) -> ModelVersion:
    """Number and store the version, fenced by the update lease (a process that lost it writes nothing)."""
    lease.check()
    candidate = ctx.registry.register_version(version, fence=lease.fence())
    faults.reach("after_register")
    _finished(ctx, candidate)
    return candidate


def _finished(ctx: Context, candidate: ModelVersion) -> None:
    ctx.events.append_once(candidate.model, "update.finished", ("version",), version=candidate.number,
                           seconds=candidate.lineage.timings)


def _forgot(report: GateReport) -> bool:
    """Whether the candidate failed on the earlier sites (stronger protection can help), not only its new one."""
    pooled = report.pooled_lower_bound is not None and report.pooled_lower_bound <= -report.tolerance
    return pooled or any(not line.passed and not line.new_site for line in report.sites)


def _reject(ctx: Context, model: Model, candidate: ModelVersion, report: GateReport, ids: list[str],
            final: bool, recorded: bool) -> None:
    if not recorded:
        ctx.registry.set_status(model.name, candidate.number, VersionStatus.REJECTED, report.id)
    ctx.events.append_once(model.name, "gate.failed", ("version",), version=candidate.number,
                           reasons=report.reasons, report=report.id)
    faults.reach("after_reject")
    if final:
        _wait_or_give_up(ctx, model, candidate.number, "; ".join(report.reasons), ids)


def _wait_or_give_up(ctx: Context, model: Model, version: int, reasons: str, ids: list[str]) -> None:
    """Each batch of a rejected update waits in the pending set for the model's next update, until it has been in
    `model.retry.updates` rejected updates: then it is rejected for good. A replay counts a rejection once."""
    given_up = []
    for batch_id in ids:
        state = ctx.registry.batches.state(batch_id)
        counted = state.status in FINAL_BATCH or (state.status is BatchStatus.WAITING and state.version == version)
        if not counted:  # a replay counts this rejection once
            updates = state.updates + 1
            waits = updates < model.retry.updates
            detail = f"{reasons}; rejected in {updates} of at most {model.retry.updates} updates" + \
                ("; joins the model's next update" if waits else "")
            state = BatchState(status=BatchStatus.WAITING if waits else BatchStatus.REJECTED, version=version,
                               drift_report_id=state.drift_report_id, detail=detail, updates=updates)
            ctx.registry.batches.set_state(batch_id, state)
        given_up += [] if state.status is BatchStatus.WAITING else [batch_id]
        if state.status in (BatchStatus.WAITING, BatchStatus.REJECTED) and state.version == version:
            ctx.events.append_once(model.name, f"batch.{state.status.value}", ("batch", "version"), batch=batch_id,
                                   version=version, updates=state.updates)
    ctx.registry.batches.clear_pending(model.name, given_up)


def _promote(ctx: Context, lease: Lease, model: Model, candidate: ModelVersion, report: GateReport,
             ids: list[str], blessed: bool) -> None:
    if not blessed:
        ctx.registry.set_status(model.name, candidate.number, VersionStatus.BLESSED, report.id)
    ctx.events.append_once(model.name, "gate.passed", ("version",), version=candidate.number, report=report.id)
    faults.reach("after_gate")
    if model.shadow is not None and ctx.registry.resolve(model.name) is not None:
        # mirrored beside production first (a first version has nothing to agree with); judge() decides
        shadowing.begin(ctx.stores, model, candidate)
        return
    if approving.waits(ctx.stores, model, candidate, f"passed gate {report.id}"):  # an approval model's approvers
        return
    if canary.begin(ctx.registry, ctx.events, ctx.artifacts, model, candidate):  # a share of live requests first
        return
    promotion.promote(ctx.registry, ctx.events, model.name, candidate.number, who="daemon",
                      reason=f"passed gate {report.id}", fence=lease.fence(), artifacts=ctx.artifacts)
    faults.reach("after_promotion")
    _set_states(ctx, ids, BatchStatus.PROMOTED, version=candidate.number)
    ctx.registry.batches.clear_pending(model.name, ids)


def _progress(ctx: Context, ids: list[str], candidate: int, site: str, row: dict[str, float]) -> None:
    """Show a running update's epochs in its batches' state (GET /v1/batches/{id}); best effort."""
    overrides = ctx.search.candidates or [{}]
    total = int(row.get("epochs", ctx.train.epochs))
    try:
        _set_states(ctx, ids, BatchStatus.TRAINING,
                    detail=f"candidate {candidate + 1}/{len(overrides)}, site {site}: epoch {int(row['epoch'])}/"
                           f"{total}, loss {row['loss']:.4f}")
    except StoreUnavailable as e:  # Redis away for a moment: training goes on, the next epoch reports
        log.warning("training progress not recorded: %s", e)
    faults.reach("during_training")


def _set_states(ctx: Context, ids: list[str], status: BatchStatus, version: int | None = None,
                detail: str = "") -> None:
    for batch_id in ids:
        previous = ctx.registry.batches.state(batch_id)
        ctx.registry.batches.set_state(batch_id, BatchState(
            status=status, version=version if version is not None else previous.version,
            drift_report_id=previous.drift_report_id, detail=detail, updates=previous.updates))

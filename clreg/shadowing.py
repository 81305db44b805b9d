"""Shadow evaluation: a candidate that passed its gate answers a share of live requests beside production
before it may replace it (as Seldon's and KServe's shadow deployments do).

`begin` (the pipeline, instead of promoting) marks the candidate mirrored and its batches `shadowing`; they
stay in the model's pending set, so no other update of the model starts meanwhile. Replicas run the
candidate on `share` of requests, discard its answers and count how often it agreed with production, per
site. `judge` (a scheduled job of the daemon) gives the verdict once `min_requests` were mirrored: promoted
when the agreement reaches `min_agreement`, otherwise rejected with the figures as the reason; with fewer
requests the candidate waits. Every step is re-entrant, so a daemon that died between two of them is
finished by the next run.
"""

from __future__ import annotations

import logging

from clreg import approving, faults
from clreg.context import Stores
from clreg.registry import canary, promotion
from clreg.registry.canary import Canaries
from clreg.registry.errors import Conflict
from clreg.registry.leases import Lease
from clreg.registry.records import BatchState, BatchStatus, Incarnation, Model, ModelVersion, VersionStatus
from clreg.registry.shadow import ShadowFigures, ShadowRun, Shadows

log = logging.getLogger(__name__)


def begin(stores: Stores, model: Model, candidate: ModelVersion) -> None:
    """Mirror a blessed candidate on live traffic; its batches wait in `shadowing` for the verdict."""
    assert model.shadow is not None
    policy = model.shadow
    Shadows(stores.registry).start(ShadowRun(model=model.name, version=candidate.number, policy=policy))
    faults.reach("during_shadow_begin")
    stores.events.append_once(model.name, "shadow.started", ("version",), version=candidate.number,
                              share=policy.share, min_requests=policy.min_requests,
                              min_agreement=policy.min_agreement)
    _set_states(stores, candidate, BatchStatus.SHADOWING,
                f"mirrored on {policy.share:.0%} of live requests until {policy.min_requests} requests, "
                f"then promoted if it agrees with production on at least {policy.min_agreement:.0%} of samples")


def resume(stores: Stores, model: Model, run: ShadowRun) -> None:
    """Finish a `begin` a crash cut short (its event, its batches' states, the last written): nothing when its
    batches left `gated` (mirrored, or judged since)."""
    version = stores.registry.get_version(run.model, run.version)
    ids = version.lineage.batch_ids
    if ids and stores.registry.batches.state(ids[-1]).status is BatchStatus.GATED:
        begin(stores, model.model_copy(update={"shadow": run.policy}), version)


def judge(stores: Stores, holder: Incarnation, lease_s: float) -> list[tuple[str, int, str]]:
    """Give every mirrored candidate with enough requests its verdict; (model, version, verdict) for each."""
    shadows = Shadows(stores.registry)
    verdicts = []
    for name, run in shadows.active_all(stores.registry.list_models()).items():
        if not _due(stores, shadows, run):  # read-only until a verdict is due: no lease taken every few seconds
            continue
        lease = Lease(stores.registry, name, holder, lease_s=lease_s)
        if not lease.acquire():  # an update of the model is running: the next run judges
            continue
        try:
            verdict = _judge(stores, shadows, run, lease)
        finally:
            lease.release()
        if verdict:
            verdicts.append((name, run.version, verdict))
    return verdicts


def _due(stores: Stores, shadows: Shadows, run: ShadowRun) -> bool:
    """Whether the candidate has its requests, or was decided already (by an admin, or a run that died)."""
    if stores.registry.status(run.model, run.version) is not VersionStatus.BLESSED:
        return True
    figures = shadows.figures(run.model, [run.version]).get(run.version)
    return figures is not None and figures.total.requests >= run.policy.min_requests


def _judge(stores: Stores, shadows: Shadows, run: ShadowRun, lease: Lease) -> str | None:
    version = stores.registry.get_version(run.model, run.version)
    status = stores.registry.status(run.model, run.version)
    figures = shadows.figures(run.model, [run.version]).get(run.version, ShadowFigures.of({}))
    total, policy = figures.total, run.policy
    if status is VersionStatus.BLESSED and total.requests < policy.min_requests:
        return None  # waits for traffic
    if status is VersionStatus.BLESSED:
        figures_line = f"agreement {_pct(total.agreement)} over {total.requests} mirrored requests"
        if total.agreement is not None and total.agreement >= policy.min_agreement:
            _promote(stores, run, lease, f"shadow {figures_line}")
        else:
            reason = f"shadow {figures_line} is under the required {policy.min_agreement:.0%}"
            _reject(stores, run, reason)
        status = stores.registry.status(run.model, run.version)
    faults.reach("during_shadow_judge")
    _finish(stores, shadows, run, version, status)
    return status.value


def _promote(stores: Stores, run: ShadowRun, lease: Lease, reason: str) -> None:
    model = stores.registry.get_model(run.model)
    candidate = stores.registry.get_version(run.model, run.version)
    if approving.waits(stores, model, candidate, reason):
        return  # an approval model: the approvers decide, after the shadow run
    if canary.begin(stores.registry, stores.events, stores.artifacts, model, candidate):
        return  # a share of live requests next, then the canary's verdict
    try:
        promotion.promote(stores.registry, stores.events, run.model, run.version, who="daemon", reason=reason,
                          fence=lease.fence(), artifacts=stores.artifacts)
    except Conflict:  # archived or rejected meanwhile (by an admin): _finish reads the status it has now
        log.warning("shadowed version %s of %s could not be promoted", run.version, run.model)


def _reject(stores: Stores, run: ShadowRun, reason: str) -> None:
    try:
        stores.registry.set_status(run.model, run.version, VersionStatus.REJECTED,
                                   expect=frozenset({VersionStatus.BLESSED}))
    except Conflict:  # promoted or archived meanwhile (by an admin): _finish reads the status it has now
        return
    stores.events.append_once(run.model, "shadow.failed", ("version",), version=run.version, reasons=[reason])
    _set_states(stores, stores.registry.get_version(run.model, run.version), BatchStatus.REJECTED, reason)


def _finish(stores: Stores, shadows: Shadows, run: ShadowRun, version: ModelVersion, status: VersionStatus) -> None:
    """The batches' final states, the pending set, the event, the end of the run: in that order, so a replay
    completes it."""
    ids = version.lineage.batch_ids
    if status is VersionStatus.AWAITING_APPROVAL or Canaries(stores.registry).active(run.model) is not None:
        # its batches wait with it, pending, for the approvers (clreg/approving.py) or the canary (registry/canary.py)
        stores.events.append_once(run.model, "shadow.finished", ("version",), version=run.version,
                                  verdict=status.value)
        shadows.end(run.model, run.version)
        return
    if status is VersionStatus.PRODUCTION or stores.registry.resolve(run.model) == run.version:
        _set_states(stores, version, BatchStatus.PROMOTED)
    elif ids and stores.registry.batches.state(ids[0]).status is not BatchStatus.REJECTED:
        _set_states(stores, version, BatchStatus.REJECTED, f"version {run.version} is {status.value}")
    stores.registry.batches.clear_pending(run.model, ids)
    stores.events.append_once(run.model, "shadow.finished", ("version",), version=run.version,
                              verdict=status.value)
    shadows.end(run.model, run.version)  # last: a run that died before it is judged again and finished


def _set_states(stores: Stores, version: ModelVersion, status: BatchStatus, detail: str = "") -> None:
    for batch_id in version.lineage.batch_ids:
        previous = stores.registry.batches.state(batch_id)
        stores.registry.batches.set_state(batch_id, BatchState(status=status, version=version.number,
                                                             drift_report_id=previous.drift_report_id,
                                                             detail=detail))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"

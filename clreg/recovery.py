"""What an interrupted update left behind, read from the store so that the next holder of the lease resumes it.

An update writes, in order: batch states (training), a registered candidate, its gate report and verdict
(blessed or rejected), the production alias, the batches' final states, the pending set. A process may
die between any two of these. The next update of the model starts here:
- `settle` finishes batches whose verdict was written or whose version already holds production;
- `attempts` finds the candidates already made for exactly these batches from this production version,
  so they are reused (gated, promoted or counted as a rejected attempt) instead of trained again;
- `abandon_strays` closes any other candidate left without a verdict, with the reason.
"""

from __future__ import annotations

from clreg.context import Stores
from clreg.registry.errors import Conflict
from clreg.registry.records import (
    FINAL_BATCH,
    Batch,
    BatchState,
    BatchStatus,
    ModelVersion,
    VersionStatus,
    VersionView,
)

RESUMABLE = frozenset({VersionStatus.CANDIDATE, VersionStatus.BLESSED, VersionStatus.REJECTED})


def settle(stores: Stores, model: str, production: ModelVersion | None) -> list[Batch]:
    """Take finished batches out of the pending set; the rest, oldest first, are what the update learns."""
    learnt = learnt_by(stores, production)
    done: list[str] = []
    waiting: list[Batch] = []
    for batch_id in stores.registry.batches.pending(model):
        state = stores.registry.batches.state(batch_id)
        if state.status not in FINAL_BATCH and batch_id in learnt:  # promoted, states not yet written
            stores.registry.batches.set_state(batch_id, BatchState(
                status=BatchStatus.PROMOTED, version=learnt[batch_id], drift_report_id=state.drift_report_id))
            state = stores.registry.batches.state(batch_id)
        if state.status in FINAL_BATCH:
            done.append(batch_id)
        else:
            waiting.append(stores.registry.batches.get(batch_id))
    stores.registry.batches.clear_pending(model, done)
    return sorted(waiting, key=lambda b: b.created_at)


def learnt_by(stores: Stores, version: ModelVersion | None) -> dict[str, int]:
    """Batch id -> the version (this one or an ancestor) that learnt it."""
    out: dict[str, int] = {}
    while version is not None:
        out.update({b: version.number for b in version.lineage.batch_ids if b not in out})
        parent = version.lineage.parent
        version = None if parent is None else stores.registry.get_version(version.model, parent)
    return out


def attempts(stores: Stores, model: str, production: ModelVersion | None, batch_ids: list[str]) -> list[VersionView]:
    """Candidates already made for exactly these batches from this production version, oldest first."""
    parent = production.number if production else None
    wanted = sorted(batch_ids)
    return [v for v in stores.registry.list_versions(model)
            if v.status in RESUMABLE and v.version.lineage.parent == parent
            and sorted(v.version.lineage.batch_ids) == wanted]


def abandon_strays(stores: Stores, model: str, keep: set[int]) -> list[int]:
    """Close every other candidate the daemon made that has no verdict: its update can never finish it."""
    closed = []
    for view in stores.registry.list_versions(model, VersionStatus.CANDIDATE):
        if view.version.number in keep or not view.version.lineage.batch_ids:  # not made by an update
            continue
        reason = _why_stray(stores, model, view.version)
        try:
            stores.registry.set_status(model, view.version.number, VersionStatus.ABANDONED,
                                    expect=frozenset({VersionStatus.CANDIDATE}))
        except Conflict:  # gated meanwhile: it has a verdict after all
            continue
        stores.events.append(model, "update.abandoned", version=view.version.number, reason=reason)
        closed.append(view.version.number)
    return closed


def _why_stray(stores: Stores, model: str, version: ModelVersion) -> str:
    production = stores.registry.resolve(model)
    if version.lineage.parent != production:
        return (f"left without a verdict by a stopped update; trained from v{version.lineage.parent}, "
                f"production is v{production} now")
    return "left without a verdict by a stopped update; the batches it learnt are no longer waiting together"

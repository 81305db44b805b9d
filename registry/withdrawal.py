"""Ops withdraw a batch before it is learnt: it leaves the pending set, its state says who withdrew it and why.

A batch can be withdrawn while it waits: received, drift-checked, or waiting after a rejected update. The
model's update lease is taken for the change, so an update never learns a batch withdrawn while it starts;
while an update runs the withdrawal is refused (409), and a batch that is training, gated or mirrored is
decided by its update.
"""

from __future__ import annotations

from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog
from clreg.registry.leases import Lease, tool
from clreg.registry.records import BatchState, BatchStatus
from clreg.registry.store import RedisRegistry

WITHDRAWABLE = frozenset({BatchStatus.RECEIVED, BatchStatus.DRIFT_CHECKED, BatchStatus.WAITING})


def withdraw(registry: RedisRegistry, events: EventLog, batch_id: str, *, who: str, reason: str) -> BatchState:
    """Reject a waiting batch for good, on behalf of `who`; NotFound for an unknown batch, Conflict when it is
    decided, being learnt, or its model's update is running."""
    batch = registry.batches.get(batch_id)
    lease = Lease(registry, batch.model, tool())
    if not lease.acquire():
        raise Conflict(f"an update of model {batch.model!r} is running; withdraw the batch once it has finished")
    try:
        state = registry.batches.state(batch_id)
        if state.status not in WITHDRAWABLE:
            raise Conflict(f"batch {batch_id} is {state.status.value}: only a batch that is "
                           f"{', '.join(sorted(s.value for s in WITHDRAWABLE))} can be withdrawn")
        withdrawn = BatchState(status=BatchStatus.REJECTED, version=state.version,
                               drift_report_id=state.drift_report_id, updates=state.updates,
                               detail=f"withdrawn by {who}: {reason}")
        registry.batches.set_state(batch_id, withdrawn)
        registry.batches.clear_pending(batch.model, [batch_id])
        events.append(batch.model, "batch.withdrawn", batch=batch_id, site=batch.site, who=who, reason=reason)
        return withdrawn
    finally:
        lease.release()

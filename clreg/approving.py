"""The pipeline's side of approvals: a version of an `approval` model that passed its gate (and its shadow run,
where the model has one) waits for approvers instead of being promoted (registry/approvals.py).

`waits` (the pipeline and the shadow verdict, instead of promoting) opens the version's gate request: the version
waits as `awaiting_approval`, its batches too, and they stay in the pending set. `blocking` (the start of every
update) keeps the model's next update waiting while that request does, as a shadow run does, so batches arriving
meanwhile are learnt from the version the approvers chose; it first settles requests decided by approvers whose
consequences a dead process left half written. Both are safe to replay: the request's id is fixed by its version.
"""

from __future__ import annotations

import logging

from clreg.context import Stores
from clreg.registry.approvals import ApprovalRequest, Approvals, settle
from clreg.registry.errors import RegistryError
from clreg.registry.records import BatchState, BatchStatus, Model, ModelVersion

log = logging.getLogger(__name__)


def waits(stores: Stores, model: Model, candidate: ModelVersion, reason: str) -> bool:
    """For an approval model, open the blessed candidate's gate request and let its batches wait: True then;
    False for an `auto` model (the caller promotes)."""
    policy = model.approval
    if policy.mode != "approval":
        return False
    request = ApprovalRequest(id=f"r-{candidate.number}-gate", model=model.name, version=candidate.number,
                              kind="gate", requester="daemon", reason=reason, needs=policy.approvers,
                              from_version=stores.registry.resolve(model.name))
    Approvals(stores.registry, stores.events).open(request)
    detail = (f"version {candidate.number} passed its gate and waits for {policy.approvers} approver"
              f"{'s' if policy.approvers > 1 else ''} (request {request.id}); it is not served meanwhile")
    for batch_id in candidate.lineage.batch_ids:
        previous = stores.registry.batches.state(batch_id)
        if previous.status is BatchStatus.AWAITING_APPROVAL:
            continue
        stores.registry.batches.set_state(batch_id, BatchState(
            status=BatchStatus.AWAITING_APPROVAL, version=candidate.number, detail=detail,
            drift_report_id=previous.drift_report_id, updates=previous.updates))
    return True


def blocking(stores: Stores, model: str) -> bool:
    """Whether a gate request of the model waits for approvers (its next update waits with it), after settling
    every decided request left unsettled."""
    approvals = Approvals(stores.registry, stores.events)
    requests = approvals.all(model)
    for request in requests:
        if request.status != "waiting" and not request.settled:
            try:
                settle(stores.registry, stores.events, request, stores.artifacts)
            except RegistryError as e:  # Redis away, or a record gone: the next update tries again
                log.warning("approval request %s of %s not settled yet: %s", request.id, model, e)
    return any(r.kind == "gate" and r.status == "waiting" for r in requests)

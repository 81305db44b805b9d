"""GET and PUT /v1/models/{name}/protocol: a model's modification protocol, every revision, and the admin's change
of its approval policy or readiness rules (registry/protocol.py), audited as a new revision.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from clreg.registry.canary import Canaries
from clreg.registry.protocol import Protocols
from clreg.registry.records import ApprovalPolicy, CanaryPolicy, Name, Readiness
from clreg.serving import evidence
from clreg.serving.errors import BadRequest
from clreg.serving.services import Admin, Reader, Svc

# The protocol's routes, and the release notes' and evidence pack's (serving/evidence.py) that cite it.
router = APIRouter()
router.include_router(evidence.router)


class ProtocolChange(BaseModel):
    approval: ApprovalPolicy | None = None  # who moves production from now on
    readiness: Readiness | None = None  # when a site counts as validated from now on
    canary: CanaryPolicy | None = None  # a candidate answering a share of requests first; null (sent) turns it off
    reason: str = Field(min_length=1, max_length=500, description="why: kept in the revision and its event")


@router.get("/v1/models/{name}/protocol")
def get_protocol(name: Name, svc: Svc, _: Reader) -> dict[str, Any]:
    """The current revision of the model's protocol and every revision before it (oldest first)."""
    svc.registry.get_model(name)
    revisions = [p.model_dump(mode="json") for p in Protocols(svc.registry, svc.events).all(name)]
    return {"current": revisions[-1] if revisions else None, "revisions": revisions}


@router.put("/v1/models/{name}/protocol")
def change_protocol(name: Name, body: ProtocolChange, svc: Svc, who: Admin) -> dict[str, Any]:
    """Change the approval policy, the readiness rules or the canary (null: none): the model's record and a new
    protocol revision, with its protocol.changed event, in one transaction (nothing changes without one)."""
    changes: dict[str, Any] = {k: getattr(body, k) for k in ("approval", "readiness", "canary")
                               if k in body.model_fields_set}
    if changes.get("approval", True) is None or changes.get("readiness", True) is None:
        raise BadRequest("the approval policy and the readiness rules cannot be null; give them whole")
    if not changes:
        raise BadRequest("give the approval policy, the readiness rules or the canary to change, with a reason")
    model = svc.registry.get_model(name).model_copy(update=changes)
    revised = Protocols(svc.registry, svc.events).revise(model, who=who, reason=body.reason, record=True)
    return revised.model_dump(mode="json")


@router.get("/v1/models/{name}/canary")
def get_canary(name: Name, svc: Svc, _: Reader, version: Annotated[int | None, Query(ge=1, le=2**53)] = None
               ) -> dict[str, Any]:
    """The candidate answering a share of requests now (null when none), with what it did at each site; with
    `version`, what that version did when it was the canary."""
    svc.registry.get_model(name)
    canaries = Canaries(svc.registry)
    run = canaries.active(name)
    number = version if version is not None else run.version if run else None
    figures = canaries.figures(name, number) if number is not None else {}
    return {"run": run.model_dump(mode="json") if run else None,
            "sites": {s: {**c.model_dump(), "estimate": c.estimate, "error_rate": c.error_rate}
                      for s, c in figures.items()}}

"""Approvers and approvals over HTTP (registry/approvers.py, registry/approvals.py), and the admin's move of
production, which for an `approval` model becomes a request (answer 202) that approvers decide.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clreg.registry import promotion
from clreg.registry.approvals import ApprovalRequest, Approvals, request_move, settle
from clreg.registry.approvers import Approvers
from clreg.registry.records import Name
from clreg.serving.auth import APPROVER
from clreg.serving.errors import Forbidden
from clreg.serving.services import Admin, Reader, Svc

Number = Annotated[int, Path(ge=1, le=2**53)]
Status = Literal["waiting", "approved", "declined", "all"]


class AliasMove(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field(min_length=1, max_length=500)
    force: bool = False


class NewApprover(BaseModel):
    name: Name


class Verdict(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="why: kept in the request and the alias history")


def public(request: ApprovalRequest) -> dict[str, Any]:
    """A request as the API shows it, with the approvers so far."""
    return {**request.model_dump(mode="json"), "approvers": request.approvers}


def approver(svc: Svc, authorization: Annotated[str | None, Header()] = None) -> str:
    return svc.tokens.require_approver(authorization)


Approver = Annotated[str, Depends(approver)]
router = APIRouter()


@router.post("/v1/approvers", status_code=201)
def add_approver(body: NewApprover, svc: Svc, _: Admin) -> dict[str, Any]:
    """Create an approver: its token is returned once and stored hashed."""
    record, token = Approvers(svc.registry).add(body.name)
    return {**record.public(), "token": token}


@router.get("/v1/approvers")
def list_approvers(svc: Svc, _: Reader) -> list[dict[str, Any]]:
    return [a.public() for a in Approvers(svc.registry).all()]


@router.delete("/v1/approvers/{name}")
def remove_approver(name: Name, svc: Svc, _: Admin) -> dict[str, Any]:
    """Revoke an approver's token; its decisions stay in the records."""
    Approvers(svc.registry).remove(name)
    return {"name": name, "removed": True}


@router.get("/v1/models/{name}/approvals")
def model_approvals(name: Name, svc: Svc, _: Reader, status: Status = "all") -> list[dict[str, Any]]:
    """The model's approval requests, oldest first, each with its decisions."""
    svc.registry.get_model(name)
    return [public(r) for r in Approvals(svc.registry, svc.events).all(name) if status in ("all", r.status)]


@router.get("/v1/approvals")
def all_approvals(svc: Svc, _: Reader, status: Status = "waiting") -> list[dict[str, Any]]:
    """Requests of every model (by default those waiting for a decision)."""
    approvals = Approvals(svc.registry, svc.events)
    return [public(r) for m in svc.registry.list_models() for r in approvals.all(m) if status in ("all", r.status)]


def _decide(svc: Svc, name: str, number: int, who: str, verdict: Literal["approve", "decline"], reason: str
            ) -> dict[str, Any]:
    svc.registry.get_model(name)
    decided = Approvals(svc.registry, svc.events).decide(name, number, who, verdict, reason)
    return public(settle(svc.registry, svc.events, decided, svc.artifacts))


@router.post("/v1/models/{name}/versions/{number}/approve")
def approve(name: Name, number: Number, body: Verdict, svc: Svc, who: Approver) -> dict[str, Any]:
    """Approve the request waiting for this version; the last approval it needs moves production."""
    return _decide(svc, name, number, who, "approve", body.reason)


@router.post("/v1/models/{name}/versions/{number}/decline")
def decline(name: Name, number: Number, body: Verdict, svc: Svc, who: Approver) -> dict[str, Any]:
    """Decline the request waiting for this version (a blessed version is then declined for good)."""
    return _decide(svc, name, number, who, "decline", body.reason)


@router.post("/v1/models/{name}/aliases/production", responses={202: {"description": "an approval request"}})
def move_production(name: Name, body: AliasMove, svc: Svc, authorization: Annotated[str | None, Header()] = None
                    ) -> JSONResponse:
    """Pin or roll back production (admin): the move itself, or for an `approval` model a request that
    approvers decide (202); an approver may ask too, and then another approver decides."""
    role = svc.tokens.role(authorization)
    asker = role is not None and role.startswith(APPROVER)
    if role != "admin" and not asker:
        raise Forbidden("this action needs the admin token (or an approver's, for an approval model)")
    approval = svc.registry.get_model(name).approval.mode == "approval"
    if asker and not approval:
        raise Forbidden(f"model {name!r} has no approval policy: moving production needs the admin token")
    if approval:
        request = request_move(svc.registry, svc.events, name, body.version, who=str(role), reason=body.reason,
                               force=body.force)
        return JSONResponse({"status": "awaiting_approval", "from_version": request.from_version,
                             "to_version": request.version, "request": public(request)}, status_code=202)
    change = promotion.promote(svc.registry, svc.events, name, body.version, who="admin", reason=body.reason,
                               force=body.force, artifacts=svc.artifacts)
    return JSONResponse(change.model_dump())

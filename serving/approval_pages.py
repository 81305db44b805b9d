"""The console's approvals page: the requests waiting for approvers, with what each rests on (the gate's verdict,
the locked sets' figures, a link to the evidence pack), a form to approve or decline for an approver's session, and
every decided request with its decisions.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.
"""

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Cookie, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from clreg.registry.approvals import ApprovalRequest, Approvals, Verdict, settle
from clreg.registry.errors import RegistryError
from clreg.registry.evidence import pack
from clreg.registry.records import Name
from clreg.registry.store import RedisRegistry
from clreg.serving import evidence, session
from clreg.serving.auth import APPROVER
from clreg.serving.console import TEMPLATES, _form, _version
from clreg.serving.errors import BadRequest, ServingError, Unauthorized
from clreg.serving.responses import error_response
from clreg.serving.services import Svc

Session = Annotated[str | None, Cookie(alias=session.COOKIE)]


def rows(reg: RedisRegistry, approvals: Approvals) -> list[dict[str, Any]]:
    """Every request of every model, newest first, with its version's gate verdict."""
    out = []
    for model in reg.list_models():
        for request in approvals.all(model):
            gate_id = reg.gate_report_id(model, request.version)
            gate = reg.reports.get_gate(gate_id) if gate_id else None
            out.append({"request": request, "gate": gate, "status": reg.status(model, request.version).value})
    return sorted(out, key=lambda r: r["request"].created_at, reverse=True)


def may_decide(role: str, request: ApprovalRequest) -> bool:
    """Whether the signed-in role may decide the request (an approver, not its requester, not decided yet)."""
    name = role.removeprefix(APPROVER)
    return (role.startswith(APPROVER) and request.status == "waiting" and request.requester != role
            and all(d.approver != name for d in request.decisions))


router = APIRouter(prefix="/ui", include_in_schema=False)  # GET /ui/approvals and its form's POST


@router.get("/approvals")
def page(request: Request, svc: Svc, cookie: Session = None) -> Response:
    try:
        role = session.role_of(svc.tokens, cookie)
    except Unauthorized:
        return RedirectResponse("/ui/login", status_code=303)
    found = rows(svc.registry, Approvals(svc.registry, svc.events))
    return TEMPLATES.TemplateResponse(request, "approvals.html", {
        "role": role, "csrf": session.csrf_token(svc.tokens, cookie or ""), "evidently_ui": "",
        "waiting": [r for r in found if r["request"].status == "waiting"],
        "decided": [r for r in found if r["request"].status != "waiting"], "may_decide": may_decide})


@router.get("/models/{name}/versions/{number}/evidence")
def evidence_page(request: Request, name: Name, number: str, svc: Svc, cookie: Session = None) -> Response:
    """The evidence pack's page (as GET /v1/models/{m}/versions/{n}/evidence?format=html) for a session."""
    try:
        session.role_of(svc.tokens, cookie)
    except Unauthorized:
        return RedirectResponse("/ui/login", status_code=303)
    return HTMLResponse(evidence.render(pack(svc.registry, svc.artifacts, svc.events, name, _version(number))))


@router.post("/approvals/{name}/{number}")
async def decide(request: Request, name: Name, number: str, svc: Svc, cookie: Session = None) -> Response:
    """Approve or decline the request waiting for a version, as the approver signed in."""
    form = await _form(request)
    try:
        who = session.check_decision(svc.tokens, cookie, form.get("csrf"))
        verdict: Verdict = "approve" if form.get("verdict") == "approve" else "decline"
        reason = form.get("reason", "").strip()
        if form.get("verdict") not in ("approve", "decline"):
            raise BadRequest("the verdict is approve or decline")
        if not reason:
            raise BadRequest("give a reason: it is kept in the request and the alias history")
        svc.registry.get_model(name)
        decided = Approvals(svc.registry, svc.events).decide(name, _version(number), who, verdict, reason[:500])
        settle(svc.registry, svc.events, decided, svc.artifacts)
    except (ServingError, RegistryError, ValueError) as e:
        answer = error_response(e)
        return TEMPLATES.TemplateResponse(request, "error.html", {
            "error": json.loads(bytes(answer.body)), "back": "/ui/approvals", "role": None},
            status_code=answer.status_code)
    return RedirectResponse(f"/ui/approvals#{quote(name)}-v{number}", status_code=303)

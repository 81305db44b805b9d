"""The ops console at /ui: server-rendered pages (Jinja2, inline SVG charts, a few lines of plain JS that
refresh the batch queue and the alerts), signed in with the ops or admin token.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.

Reading needs a session (serving/session.py: a signed HttpOnly, SameSite=Strict cookie); the actions
(promote, roll back, set a threshold) need the admin's session and the form's CSRF token, and promotions
and rollbacks go through a confirmation page and the same promote() as the API.
"""

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from clreg.registry import promotion
from clreg.registry.approvals import request_move
from clreg.registry.errors import RegistryError
from clreg.registry.records import Name, check_name
from clreg.serving import console_data, session, validation
from clreg.serving.errors import BadRequest, ServingError, Unauthorized
from clreg.serving.responses import error_response, stored_html
from clreg.serving.services import Services, Svc

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals.update(quote=quote, when=console_data.when)
Session = Annotated[str | None, Cookie(alias=session.COOKIE)]
KIND = r"^[a-z]{1,20}\.[a-z]{1,20}$"


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body as single values (the console's forms send no files)."""
    body = (await request.body())[:65536].decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


router = APIRouter(prefix="/ui", include_in_schema=False)


def _page(request: Request, svc: Services, cookie: str | None, template: str, **context: Any) -> Response:
    """A page for a signed-in reader, or the sign-in page for anyone else."""
    try:
        role = session.role_of(svc.tokens, cookie)
    except Unauthorized:
        return RedirectResponse("/ui/login", status_code=303)
    context.update(role=role, csrf=session.csrf_token(svc.tokens, cookie or ""), evidently_ui=svc.cfg.evidently_ui_url)
    return TEMPLATES.TemplateResponse(request, template, context)


def _failed(request: Request, e: Exception, back: str) -> Response:
    """The refusal as a page, with the status and message the JSON API gives for it."""
    answer = error_response(e)
    body = json.loads(bytes(answer.body))
    return TEMPLATES.TemplateResponse(request, "error.html", {"error": body, "back": back, "role": None},
                                      status_code=answer.status_code)


@router.get("")
def home() -> Response:
    return RedirectResponse("/ui/models", status_code=303)


@router.get("/login")
def login_form(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(request, "login.html", {"role": None, "error": None})


@router.post("/login")
async def login(request: Request, svc: Svc) -> Response:
    try:
        role, cookie = session.issue(svc.tokens, (await _form(request)).get("token", "").strip())
    except Unauthorized as e:
        return TEMPLATES.TemplateResponse(request, "login.html", {"role": None, "error": str(e)}, status_code=401)
    out = RedirectResponse("/ui/models", status_code=303)
    out.set_cookie(session.COOKIE, cookie, max_age=session.LIFETIME_S, httponly=True, samesite="strict",
                   path="/ui", secure=request.url.scheme == "https")
    return out


@router.post("/logout")
def logout() -> Response:
    out = RedirectResponse("/ui/login", status_code=303)
    out.delete_cookie(session.COOKIE, path="/ui")
    return out


@router.get("/models")
def models(request: Request, svc: Svc, cookie: Session = None) -> Response:
    return _page(request, svc, cookie, "models.html", models=console_data.models(svc.registry, svc.events))


@router.get("/models/{name}")
def model(request: Request, name: Name, svc: Svc, cookie: Session = None) -> Response:
    return _page(request, svc, cookie, "model.html", **console_data.model(svc.registry, name))


@router.get("/models/{name}/queue")
def model_queue(request: Request, name: Name, svc: Svc, cookie: Session = None) -> Response:
    svc.registry.get_model(name)
    return _page(request, svc, cookie, "queue.html", queue=console_data.queue(svc.registry, name))


@router.get("/sites")
def sites(request: Request, svc: Svc, cookie: Session = None) -> Response:
    return _page(request, svc, cookie, "sites.html", rows=console_data.sites(svc.registry, svc.artifacts))


@router.get("/alerts")
def alerts(request: Request, svc: Svc, cookie: Session = None, model: Name | None = None, site: Name | None = None,
           kind: Annotated[str | None, Query(pattern=KIND)] = None, rows_only: bool = False) -> Response:
    found = console_data.alerts(svc.events, model, site, kind)
    return _page(request, svc, cookie, "alert_rows.html" if rows_only else "alerts.html", alerts=found,
                 filters={"model": model or "", "site": site or "", "kind": kind or ""})


@router.get("/drift/{report_id}")
def drift_page(request: Request, report_id: Name, svc: Svc, cookie: Session = None) -> Response:
    """A drift check's Evidently page, for a signed-in reader."""
    try:
        session.role_of(svc.tokens, cookie)
    except Unauthorized:
        return RedirectResponse("/ui/login", status_code=303)
    report = svc.registry.reports.get_drift(report_id)
    if not report.html_artifact:
        raise BadRequest(f"drift report {report_id!r} was stored without its page")
    return stored_html(svc.artifacts.get(report.html_artifact), request.headers.get("accept-encoding", ""))


@router.get("/sites/{site}/validation")
def site_validation(request: Request, site: Name, model: Name, svc: Svc, cookie: Session = None) -> Response:
    """The site's validation report page (as GET /v1/sites/{site}/validation?format=html)."""
    try:
        session.role_of(svc.tokens, cookie)
    except Unauthorized:
        return RedirectResponse("/ui/login", status_code=303)
    found = validation.report(svc.registry, svc.artifacts, model, site, inputs=svc.inputs)
    return HTMLResponse(validation.render_html(found))


@router.post("/models/{name}/production")
async def move(request: Request, name: Name, svc: Svc, cookie: Session = None) -> Response:
    """Promote or roll back: the first post shows what will change, the confirmed one moves the alias."""
    back, reg = f"/ui/models/{quote(name)}", svc.registry
    form = await _form(request)
    try:
        session.check_action(svc.tokens, cookie, form.get("csrf"))
        version, reason = _version(form.get("version")), form.get("reason", "").strip()
        if not reason:
            raise BadRequest("give a reason: it is kept in the alias history")
        current = reg.resolve(name)
        force = form.get("force") == "yes"  # a version that did not pass its gates, knowingly
        approval = reg.get_model(name).approval  # an approval model's move becomes a request approvers decide
        if form.get("confirmed") != "yes":
            return _page(request, svc, cookie, "confirm.html", name=name, version=version, reason=reason,
                         current=current, force=force, status=reg.status(name, version).value, approval=approval)
        if approval.mode == "approval":
            request_move(reg, svc.events, name, version, who="admin (console)", reason=reason, force=force)
            return RedirectResponse("/ui/approvals", status_code=303)
        promotion.promote(reg, svc.events, name, version, who="admin (console)", reason=reason, force=force,
                          artifacts=svc.artifacts)
    except (ServingError, RegistryError, ValueError) as e:
        return _failed(request, e, back)
    return RedirectResponse(back, status_code=303)


@router.post("/sites/threshold")
async def threshold(request: Request, svc: Svc, cookie: Session = None) -> Response:
    """Set or clear (empty) a site's threshold, as PUT /v1/sites/{site}/threshold does."""
    form = await _form(request)
    try:
        session.check_action(svc.tokens, cookie, form.get("csrf"))
        value = _threshold(form.get("threshold", ""))
        record = svc.registry.get_site(check_name(form.get("site", "")))
        svc.registry.update_site(record.model_copy(update={"threshold": value}))
    except (ServingError, RegistryError, ValueError) as e:
        return _failed(request, e, "/ui/sites")
    return RedirectResponse("/ui/sites", status_code=303)


def _version(raw: str | None) -> int:
    if not raw or not raw.isdigit() or not 1 <= int(raw) <= 2**53:
        raise BadRequest(f"version must be a whole number from 1, got {raw!r}")
    return int(raw)


def _threshold(raw: str) -> float | None:
    """A threshold in [0, 1], or None for an empty field (clear it)."""
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise BadRequest(f"threshold must be a number in [0, 1], got {raw!r}") from e
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"threshold must lie in [0, 1], got {value}")
    return value


"""Gateway: the FastAPI application for ingest and the ops API (everything but /v1/predict).

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the
routes, which close over `create_app`'s locals.

`create_app(cfg)` builds a plain FastAPI app; `deployment(cfg)` wraps it for Ray Serve, which builds
the app inside each replica (`__serve_build_asgi_app__`).
"""


import gzip
import hmac
import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from ray import serve
from starlette.concurrency import run_in_threadpool

from learner.operating import operating_point, threshold_for_sensitivity
from registry.artifacts import ArtifactStore, version_calibration
from registry.batches import Limits, ingest, token_sha256
from registry.dicom import DicomLimits, dicom_zip_to_npz
from registry.errors import Conflict, NotFound, RegistryError
from registry.events import EventLog, IngestQueue
from registry.records import (
    SERVABLE,
    InputSpec,
    Model,
    ModelVersion,
    Name,
    Site,
    SiteCalibration,
    VersionStatus,
    check_name,
)
from registry.status import pipeline_status
from registry.store import RedisRegistry
from serving import metrics
from serving.config import ServingConfig
from serving.errors import (
    BadRequest,
    Forbidden,
    NotReady,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    Unprocessable,
    UnsupportedMedia,
)
from serving.responses import error_response

GZIP_MAGIC = b"\x1f\x8b"


class NewModel(BaseModel):
    name: Name
    factory: str = "learner.models:small_cnn"
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec


class NewSite(BaseModel):
    name: Name
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class NewThreshold(BaseModel):
    threshold: float | None = Field(ge=0.0, le=1.0)


class AliasMove(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field(min_length=1, max_length=500)
    force: bool = False


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def _html_page(stored: bytes, accept_encoding: str) -> Response:
    """A stored report page: gzip bytes go out as they are where the client takes gzip (pages before gzip: plain)."""
    if stored[:2] != GZIP_MAGIC:
        return HTMLResponse(stored.decode())
    if "gzip" in accept_encoding.lower():
        return Response(stored, media_type="text/html; charset=utf-8", headers={"Content-Encoding": "gzip"})
    return HTMLResponse(gzip.decompress(stored).decode())


def _site_calibration(artifacts: ArtifactStore, version: ModelVersion, site: str) -> SiteCalibration:
    """A site's calibration in a version, with the held-out scores that operating points need."""
    calibration = version_calibration(artifacts, version)
    cal = calibration.sites.get(site) if calibration else None
    if cal is None:
        raise NotFound(f"version {version.number} of {version.model} has no held-out data of site {site!r}")
    if cal.scores is None or cal.labels is None:
        raise Unprocessable("operating points are for binary models; this one has more than two classes")
    return cal


def create_app(cfg: ServingConfig) -> FastAPI:
    """The gateway's routes over one registry connection."""
    app = FastAPI(title="clreg", version="0.1.0", description="Continual-learning model registry")
    reg = RedisRegistry(cfg.store)
    artifacts = ArtifactStore(cfg.artifacts_url)
    events, queue = EventLog(reg), IngestQueue(reg)
    queue.ensure_group()
    metric_registry, batch_counter = metrics.build(reg, cfg.stuck)
    limits = Limits(max_samples=cfg.max_samples, heldout_fraction=cfg.heldout_fraction)
    dicom_limits = DicomLimits(max_files=cfg.max_samples, max_unzipped_bytes=cfg.max_unzipped_bytes)

    @app.exception_handler(ServingError)
    @app.exception_handler(RegistryError)
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid", "detail": detail}, status_code=422)

    def admin(authorization: Annotated[str | None, Header()] = None) -> str:
        token = _bearer(authorization)
        if not cfg.admin_token_sha256 or not hmac.compare_digest(token_sha256(token), cfg.admin_token_sha256):
            raise Forbidden("this action needs the admin token")
        return "admin"

    def site_token(site: str, authorization: Annotated[str | None, Header()] = None) -> Site:
        token = _bearer(authorization)
        try:
            record = reg.get_site(check_name(site))
        except (RegistryError, ValueError) as e:
            raise Unauthorized(f"no site {site!r} holds this token") from e
        if not hmac.compare_digest(token_sha256(token), record.token_sha256):
            raise Forbidden(f"this token is not allowed to push for site {site!r}")
        return record

    @app.post("/v1/sites/{site}/batches", status_code=202)
    async def push_batch(request: Request, site_rec: Annotated[Site, Depends(site_token)],
                         model: Annotated[str, Query()]) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type not in ("application/octet-stream", "application/zip"):
            batch_counter.labels("refused").inc()
            raise UnsupportedMedia("send npz bytes as application/octet-stream, or a zip of DICOM files with "
                                   "labels.csv as application/zip")
        if int(request.headers.get("content-length") or 0) > cfg.max_body_bytes:
            raise PayloadTooLarge(f"the body limit is {cfg.max_body_bytes} bytes")
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            raise PayloadTooLarge(f"the body limit is {cfg.max_body_bytes} bytes")
        try:
            data, source = body, None
            if content_type == "application/zip":  # converted off the event loop: decoding takes a while
                spec = reg.get_model(check_name(model)).input
                data, source = await run_in_threadpool(dicom_zip_to_npz, body, spec, dicom_limits), body
            batch, new = ingest(reg, artifacts, queue, events, check_name(model), site_rec.name, data, limits,
                                source=source)
        except RegistryError:
            batch_counter.labels("refused").inc()
            raise
        batch_counter.labels("accepted" if new else "duplicate").inc()
        return JSONResponse({"batch_id": batch.id, "status": "accepted" if new else "duplicate",
                             "samples": batch.samples}, status_code=202 if new else 200)

    @app.get("/v1/batches/{batch_id}")
    def batch_state(batch_id: str) -> dict:
        batch, state = reg.get_batch(batch_id), reg.batch_state(batch_id)
        return {"batch_id": batch.id, "model": batch.model, "site": batch.site, "samples": batch.samples,
                **state.model_dump()}

    @app.get("/v1/models")
    def list_models() -> list[dict]:
        return [{**reg.get_model(m).model_dump(), "aliases": reg.aliases(m)} for m in reg.list_models()]

    @app.post("/v1/models", status_code=201)
    def create_model(body: NewModel, _: Annotated[str, Depends(admin)]) -> dict:
        model = Model(name=body.name, factory=body.factory, factory_kwargs=body.factory_kwargs, input=body.input)
        reg.create_model(model)
        return model.model_dump()

    @app.get("/v1/models/{name}/versions")
    def list_versions(name: str, status: VersionStatus | None = None, site: Name | None = None,
                      parent: Annotated[int | None, Query(ge=1)] = None, since: float | None = None,
                      until: float | None = None) -> list[dict]:
        """Versions with status and aliases; filters combine (a learnt site; created_at in [since, until))."""
        reg.get_model(name)
        views = reg.list_versions(name, status, site=site, parent=parent, since=since, until=until)
        return [v.model_dump(mode="json") for v in views]

    @app.get("/v1/models/{name}/versions/{number}")
    def get_version(name: str, number: int) -> dict:
        view = next((v for v in reg.list_versions(name) if v.version.number == number), None)
        if view is None:
            reg.get_version(name, number)  # raises NotFound with the right message
        gate = reg.get_gate_report(view.gate_report_id).model_dump() if view.gate_report_id else None
        calibration = version_calibration(artifacts, view.version)
        return {**view.model_dump(mode="json"), "gate_report": gate,
                "calibration": calibration.model_dump() if calibration else None}

    @app.get("/v1/models/{name}/aliases")
    def aliases(name: str) -> dict:
        reg.get_model(name)
        return {"aliases": reg.aliases(name),
                "history": [c.model_dump() for c in reg.alias_history(name)]}

    @app.post("/v1/models/{name}/aliases/production")
    def move_production(name: str, body: AliasMove, who: Annotated[str, Depends(admin)]) -> dict:
        status = reg.status(name, body.version)
        if status not in SERVABLE and not body.force:
            raise Conflict(f"version {body.version} is {status.value}: it has not passed the gates "
                           "(send \"force\": true to promote a candidate anyway)")
        change = reg.promote(name, body.version, who=who, reason=body.reason)
        events.append(name, "alias.moved", alias="production", to=body.version, frm=change.from_version,
                      who=who, reason=body.reason, forced=body.force)
        return change.model_dump()

    @app.get("/v1/sites")
    def list_sites() -> list[dict]:
        """Sites with what each pushed per model: batches, samples, class counts and prevalence."""
        sites = reg.sites()
        names = [s.name for s in sites]
        counts = {m: reg.site_counts(m, names) for m in reg.list_models()}
        return [{**s.model_dump(exclude={"token_sha256"}),
                 "models": {m: {**c[s.name].model_dump(), "prevalence": c[s.name].prevalence}
                            for m, c in counts.items() if s.name in c}} for s in sites]

    @app.post("/v1/sites", status_code=201)
    def add_site(body: NewSite, _: Annotated[str, Depends(admin)]) -> dict:
        token = secrets.token_urlsafe(32)
        reg.add_site(Site(name=body.name, token_sha256=token_sha256(token), threshold=body.threshold))
        return {"site": body.name, "token": token, "threshold": body.threshold}

    @app.put("/v1/sites/{site}/threshold")
    def set_threshold(site: Name, body: NewThreshold, _: Annotated[str, Depends(admin)]) -> dict:
        """Set or clear (null) a site's decision threshold for binary models; replicas pick it up on their poll."""
        record = reg.get_site(site).model_copy(update={"threshold": body.threshold})
        reg.update_site(record)
        return record.model_dump(exclude={"token_sha256"})

    @app.get("/v1/sites/{site}/operating-point")
    def site_operating_point(site: Name, model: Name,
                             threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
                             sensitivity: Annotated[float | None, Query(gt=0, le=1)] = None) -> dict:
        """Sensitivity, specificity, PPV and NPV at a threshold on the site's held-out set (production version).

        The threshold is the one given, else the one reaching the given sensitivity, else the site's own.
        """
        record = reg.get_site(site)
        reg.get_model(model)  # 404 for a model that does not exist
        number = reg.resolve(model)
        if number is None:
            raise NotReady(f"model {model!r} has no production version")
        version = reg.get_version(model, number)
        cal = _site_calibration(artifacts, version, site)
        if threshold is None and sensitivity is not None:
            threshold = threshold_for_sensitivity(np.array(cal.scores), np.array(cal.labels), sensitivity)
        threshold = threshold if threshold is not None else record.threshold
        if threshold is None:
            raise BadRequest(f"site {site!r} has no threshold: give ?threshold= or ?sensitivity=")
        point = operating_point(np.array(cal.scores), np.array(cal.labels), threshold)
        return {"model": model, "version": number, "site": site, "site_threshold": record.threshold,
                "target_sensitivity": sensitivity, **point.as_dict()}

    @app.get("/v1/alerts")
    def alerts(model: str | None = None, since: float = 0.0, site: Name | None = None,
               kind: Annotated[str | None, Query(pattern=r"^[a-z]+\.[a-z]+$")] = None) -> list[dict]:
        """Alerts, oldest first; filters combine (site: the batch's site or "serving"; kind: e.g. drift.alert)."""
        found = events.alerts(check_name(model) if model else None, since, site=site, kind=kind)
        return [e.model_dump() for e in found]

    @app.get("/v1/events")
    def list_events(model: str, since: float = 0.0) -> list[dict]:
        return [e.model_dump() for e in events.read(model, since)]

    @app.get("/v1/drift/{report_id}", response_model=None)
    def drift_report(request: Request, report_id: str, format: str = "json") -> dict | Response:
        report = reg.get_drift_report(report_id)
        if format == "html" and report.html_artifact:
            return _html_page(artifacts.get(report.html_artifact), request.headers.get("accept-encoding", ""))
        return report.model_dump()

    @app.get("/v1/status")
    def status() -> dict:
        """Daemons with their last heartbeat, stuck batches, candidates abandoned by a process that died."""
        return pipeline_status(reg, cfg.stuck).model_dump(mode="json")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        reg.ping()
        return {"status": "ready", "models": {m: reg.resolve(m) for m in reg.list_models()}}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metric_registry), media_type=CONTENT_TYPE_LATEST)

    return app


class Gateway:
    """The Serve deployment around `create_app`."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServingConfig.model_validate(cfg)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.cfg)


def deployment(cfg: ServingConfig) -> serve.Deployment:
    return serve.deployment(serve.ingress()(Gateway), name="Gateway", num_replicas=1,
                            max_ongoing_requests=cfg.max_ongoing_requests, ray_actor_options={"num_cpus": 0})

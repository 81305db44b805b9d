"""Gateway: the FastAPI application for ingest and the ops API (everything but /v1/predict).

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the
routes, which close over `create_app`'s locals.

`create_app(cfg)` builds a plain FastAPI app; `deployment(cfg)` wraps it for Ray Serve, which builds
the app inside each replica (`__serve_build_asgi_app__`).
"""


import secrets
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from ray import serve

from clreg.learner.models import check_factory, network_for
from clreg.learner.operating import (
    Costs,
    cost_threshold_shortfall,
    expected_cost,
    operating_point,
    point_interval,
    threshold_for_cost,
    threshold_for_sensitivity,
)
from clreg.registry.approvers import Approvers
from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.batches import token_sha256
from clreg.registry.errors import Conflict, NotFound, RegistryError
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.findings import SiteCalibration
from clreg.registry.inputs import InputLog
from clreg.registry.locked import overlaid
from clreg.registry.protocol import Protocols, standing
from clreg.registry.readiness import assess
from clreg.registry.records import (
    NAME_PATTERN,
    ApprovalPolicy,
    BatchId,
    BatchStatus,
    CanaryPolicy,
    Digest,
    ErrorCosts,
    InputSpec,
    Metric,
    Model,
    ModelVersion,
    Name,
    Normalisation,
    Readiness,
    ShadowPolicy,
    Site,
    VersionStatus,
)
from clreg.registry.replicas import Replicas
from clreg.registry.shadow import Shadows
from clreg.registry.status import pipeline_status
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookStore
from clreg.serving import approvals, boundary, console, metrics, protocols, uploads, validation, webhooks, withdrawals
from clreg.serving.auth import Tokens, bearer, matches
from clreg.serving.config import ServingConfig
from clreg.serving.errors import (
    BadRequest,
    Forbidden,
    NotReady,
    ServingError,
    Unauthorized,
    Unprocessable,
)
from clreg.serving.ingest import Ingest
from clreg.serving.responses import stored_html

# Epoch seconds in a query: finite, not before 1970, not past the year 5138.
Time = Annotated[float, Query(ge=0, le=1e11, allow_inf_nan=False)]


class NewModel(BaseModel):
    name: Name
    factory: str = "clreg.learner.models:small_cnn"
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec
    readiness: Readiness = Readiness()  # when a site counts as validated, and the policy for one that is not
    shadow: ShadowPolicy | None = None  # mirror each candidate on live traffic before it may be promoted
    weights: Digest | None = None  # sha256 of a checkpoint uploaded with POST /v1/artifacts: the initial weights
    normalisation: Normalisation | None = None  # with weights and none given: ImageNet's (see serving.uploads)
    metric: Metric | None = None  # what the gate, search and readiness judge; None: auroc if binary, else accuracy
    costs: ErrorCosts = ErrorCosts()  # of a false positive and a false negative (expected_cost, thresholds)
    approval: ApprovalPolicy = ApprovalPolicy()  # auto: the gate promotes; approval: approvers decide every move
    canary: CanaryPolicy | None = None  # a share of validated sites' requests answered by a candidate first


class NewSite(BaseModel):
    name: Name
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    models: list[Name] | None = Field(default=None, max_length=1000)  # None: every model
    replay: bool = True  # its training samples may be remembered and replayed in later updates
    batches_per_day: int | None = Field(default=None, ge=1, le=10**9)  # None: the gateway's default
    max_bytes: int | None = Field(default=None, ge=1, le=2**62)


class PredictRequest(BaseModel):
    inputs: list[Any] = Field(description="images as nested lists [N, C, H, W] or [N, H, W], values in [0, 1]")
    site: Name | None = Field(default=None, description="the site asking: its BatchNorm, temperature, threshold")


class NewThreshold(BaseModel):
    threshold: float | None = Field(ge=0.0, le=1.0)


def _site_calibration(artifacts: ArtifactStore, version: ModelVersion, site: str) -> SiteCalibration:
    """A site's calibration in a version, with the held-out scores that operating points need."""
    calibration = version_calibration(artifacts, version)
    cal = calibration.sites.get(site) if calibration else None
    if cal is None:
        raise NotFound(f"version {version.number} of {version.model} has no held-out data of site {site!r}")
    if cal.scores is None or cal.labels is None:
        raise Unprocessable("operating points are for binary models; this one has more than two classes")
    return cal


def _served(replicas: Replicas, model: str, version: int | None) -> dict:
    """Whether every live replica answers with `version` (after "promoted", the swap may still be under way)."""
    serving, live = replicas.serving(model, version) if version is not None else (0, 0)
    return {"served": live > 0 and serving == live, "replicas": {"live": live, "serving": serving}}


def create_app(cfg: ServingConfig) -> FastAPI:  # noqa: C901 (each route is a small closure over the app's state)
    """The gateway's routes over one registry connection."""
    app = FastAPI(title="clreg", version="0.1.0", description="Continual-learning model registry")
    boundary.install(app, cfg.allowed_hosts)
    reg = RedisRegistry(cfg.store)
    artifacts = ArtifactStore(cfg.artifacts_url)
    events, queue = EventLog(reg), IngestQueue(reg)
    queue.ensure_group()
    inputs = InputLog(cfg.store, cfg.inputs)
    metric_registry, batch_counter = metrics.build(reg, cfg.stuck, inputs, artifacts)
    pushes = Ingest(cfg, reg, artifacts, events, queue)
    tokens = Tokens(cfg.admin_token_sha256, cfg.ops_token_sha256, Approvers(reg))
    replicas = Replicas(reg, cfg.beat_interval_s)
    shadows = Shadows(reg)

    def admin(authorization: Annotated[str | None, Header()] = None) -> str:
        return tokens.require_admin(authorization)

    def reader(authorization: Annotated[str | None, Header()] = None) -> str:
        return tokens.require_reader(authorization)

    def site_token(site: Name, authorization: Annotated[str | None, Header()] = None) -> Site:
        token = bearer(authorization)
        try:
            record = reg.get_site(site)
        except NotFound as e:
            raise Unauthorized(f"no site {site!r} holds this token") from e
        if not matches(token, record.token_sha256):
            raise Forbidden(f"this token is not allowed to push for site {site!r}")
        return record

    Admin = Annotated[str, Depends(admin)]
    Reader = Annotated[str, Depends(reader)]
    app.include_router(webhooks.router(WebhookStore(reg), cfg.webhooks, admin, reader))
    app.include_router(validation.router(reg, artifacts, inputs, reader))
    app.include_router(withdrawals.router(reg, events, admin))
    app.include_router(approvals.router(reg, events, artifacts, tokens, admin, reader))  # and its console page
    app.include_router(protocols.router(reg, events, artifacts, admin, reader))  # with release notes, evidence
    app.include_router(console.router(reg, artifacts, events, tokens, cfg.evidently_ui_url, inputs))
    uploads.install(app, uploads.Uploads(artifacts, tokens, cfg.max_weights_bytes))

    @app.post("/v1/sites/{site}/batches", status_code=202)
    async def push_batch(request: Request, site_rec: Annotated[Site, Depends(site_token)],
                         model: Annotated[Name, Query()], locked: bool = False) -> JSONResponse:
        """Push a labelled batch; `locked=true`: a locked test set, never learnt, scored for every version."""
        try:
            batch, new = await pushes.push(request, site_rec, model, locked)
        except (RegistryError, ServingError):
            batch_counter.labels("refused").inc()
            raise
        batch_counter.labels("accepted" if new else "duplicate").inc()
        return JSONResponse({"batch_id": batch.id, "status": "accepted" if new else "duplicate",
                             "samples": batch.samples, "locked": batch.locked}, status_code=202 if new else 200)

    @app.get("/v1/batches/{batch_id}")
    def batch_state(batch_id: BatchId, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Where a batch is; for the ops or admin token, or the token of the site that pushed it."""
        role = tokens.role(authorization)
        batch = reg.batches.get(batch_id)
        if role is None and not matches(bearer(authorization), reg.get_site(batch.site).token_sha256):
            raise Forbidden("this batch can be read with the ops or admin token, or its site's token")
        state = reg.batches.state(batch_id)
        served = _served(replicas, batch.model, state.version) if state.status is BatchStatus.PROMOTED else {}
        return {"batch_id": batch.id, "model": batch.model, "site": batch.site, "samples": batch.samples,
                **state.model_dump(), **served}

    @app.get("/v1/models")
    def list_models(_: Reader) -> list[dict]:
        return [{**reg.get_model(m).model_dump(), "aliases": reg.aliases(m)} for m in reg.list_models()]

    @app.post("/v1/models", status_code=201)
    def create_model(body: NewModel, _: Admin) -> dict:
        """Register a model; its factory must come from an allowed module and build, and uploaded `weights` must
        fit its network, or nothing is stored."""
        norm = body.normalisation or (uploads.default_normalisation(body.input.channels) if body.weights else None)
        model = Model(name=body.name, factory=body.factory, factory_kwargs=body.factory_kwargs, input=body.input,
                      readiness=body.readiness, shadow=body.shadow, normalisation=norm, metric=body.metric,
                      costs=body.costs, approval=body.approval, canary=body.canary)
        check_factory(model.factory, cfg.factory_prefixes)
        net = network_for(model)  # it must build with its input spec before anything is stored
        if body.weights is not None:
            if body.name in reg.list_models():  # before the checkpoint is converted and stored
                raise Conflict(f"model {body.name!r} already exists")
            model = model.model_copy(update=uploads.initial_weights(artifacts, net, body.weights))
        reg.create_model(model)
        Protocols(reg, events).revise(model, who="admin", reason="model created")  # its protocol's revision 1
        return model.model_dump()

    @app.get("/v1/models/{name}/versions")
    def list_versions(name: Name, _: Reader, status: VersionStatus | None = None, site: Name | None = None,
                      parent: Annotated[int | None, Query(ge=1, le=2**53)] = None, since: Time | None = None,
                      until: Time | None = None) -> list[dict]:
        """Versions with status and aliases; filters combine (a learnt site; created_at in [since, until))."""
        reg.get_model(name)
        views = reg.list_versions(name, status, site=site, parent=parent, since=since, until=until)
        return [v.model_dump(mode="json") for v in shadows.attach(name, views)]

    @app.get("/v1/models/{name}/versions/{number}")
    def get_version(name: Name, number: Annotated[int, Path(ge=1, le=2**53)], _: Reader) -> dict:
        view = next((v for v in reg.list_versions(name) if v.version.number == number), None)
        if view is None:
            reg.get_version(name, number)  # raises NotFound with the right message
            raise NotFound(f"model {name!r} has no version {number}")
        view = shadows.attach(name, [view])[0]
        gate = reg.reports.get_gate(view.gate_report_id).model_dump() if view.gate_report_id else None
        calibration = version_calibration(artifacts, view.version)
        return {**view.model_dump(mode="json"), "gate_report": gate,
                "calibration": calibration.model_dump() if calibration else None,
                "protocol": standing(Protocols(reg, events), name, view.version.lineage.protocol),
                **_served(replicas, name, number)}

    @app.get("/v1/models/{name}/aliases")
    def aliases(name: Name, _: Reader) -> dict:
        reg.get_model(name)
        log = reg.alias_history(name, moves_only=False)  # moves and the approval steps between them
        return {"aliases": reg.aliases(name), "history": [c.model_dump() for c in log if c.action == "moved"],
                "log": [c.model_dump() for c in log]}

    @app.get("/v1/sites")
    def list_sites(_: Reader) -> list[dict]:
        """Sites with what each pushed per model: batches, samples, class counts, prevalence, and whether the
        production version is validated there (`clreg sites report` says why)."""
        sites = reg.sites()
        names = [s.name for s in sites]
        models = reg.list_models()
        counts = {m: reg.batches.site_counts(m, names) for m in models}
        production = {m: (reg.get_model(m), reg.version_by_alias(m)) for m in models}
        ready = {m: (record, overlaid(reg, version_calibration(artifacts, v), m, v.number) if v else None)
                 for m, (record, v) in production.items()}  # a locked set's figures in place of held-out ones

        def validated(model: str, site: str) -> bool | None:
            record, calibration = ready[model]
            return assess(site, calibration, record.readiness, record.task_metric).validated \
                if production[model][1] else None

        return [{**s.model_dump(exclude={"token_sha256"}),
                 "models": {m: {**c[s.name].model_dump(), "prevalence": c[s.name].prevalence,
                                "validated": validated(m, s.name)}
                            for m, c in counts.items() if s.name in c}} for s in sites]

    @app.post("/v1/sites", status_code=201)
    def add_site(body: NewSite, _: Admin) -> dict:
        """Register a site: its token (returned once, stored hashed), the models it may push to, its quotas."""
        token = secrets.token_urlsafe(32)
        site = Site(name=body.name, token_sha256=token_sha256(token), threshold=body.threshold, models=body.models,
                    replay=body.replay,
                    batches_per_day=body.batches_per_day or cfg.site_batches_per_day,
                    max_bytes=body.max_bytes or cfg.site_max_bytes)
        reg.add_site(site)
        return {"site": body.name, "token": token, **site.model_dump(exclude={"token_sha256", "name"})}

    @app.put("/v1/sites/{site}/threshold")
    def set_threshold(site: Name, body: NewThreshold, _: Admin) -> dict:
        """Set or clear (null) a site's decision threshold for binary models; replicas pick it up on their poll."""
        record = reg.get_site(site).model_copy(update={"threshold": body.threshold})
        reg.update_site(record)
        return record.model_dump(exclude={"token_sha256"})

    @app.get("/v1/sites/{site}/operating-point")
    def site_operating_point(site: Name, model: Name, _: Reader,
                             threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
                             sensitivity: Annotated[float | None, Query(gt=0, le=1)] = None,
                             cost_fp: Annotated[float | None, Query(ge=0)] = None,
                             cost_fn: Annotated[float | None, Query(ge=0)] = None,
                             prevalence: Annotated[float | None, Query(ge=0, le=1)] = None) -> dict:
        """Sensitivity, specificity, PPV and NPV at a threshold on the site's held-out set (production version).

        The threshold is the one given, else the one reaching the given sensitivity, else the one with the
        lowest expected cost for the given error costs, else the site's own. With costs, the expected cost per
        case at that threshold and at 0.5; prevalence is the held-out one unless given. Every figure comes with its
        95% bootstrap interval and the positives and negatives it rests on; a threshold chosen by cost on fewer
        than the model's min_positives / min_negatives is answered with "recommended": false and the reason.
        """
        record = reg.get_site(site)
        rules = reg.get_model(model).readiness  # 404 for a model that does not exist
        version = reg.version_by_alias(model)
        if version is None:
            raise NotReady(f"model {model!r} has no production version")
        number = version.number
        cal = _site_calibration(artifacts, version, site)
        scores, labels = np.array(cal.scores), np.array(cal.labels)
        if (cost_fp is None) != (cost_fn is None):
            raise BadRequest("give both cost_fp and cost_fn, or neither")
        costs = Costs(false_positive=cost_fp, false_negative=cost_fn) \
            if cost_fp is not None and cost_fn is not None else None
        if threshold is None and sensitivity is not None:
            threshold = threshold_for_sensitivity(scores, labels, sensitivity)
        by_cost = threshold is None and costs is not None
        if threshold is None and costs is not None:
            threshold = threshold_for_cost(scores, labels, costs, prevalence)
        threshold = threshold if threshold is not None else record.threshold
        if threshold is None:
            raise BadRequest(f"site {site!r} has no threshold: give ?threshold=, ?sensitivity= or the costs")
        point = operating_point(scores, labels, threshold)
        priced = {} if costs is None else {
            "costs": {"false_positive": costs.false_positive, "false_negative": costs.false_negative},
            "priced_at_prevalence": point.prevalence if prevalence is None else prevalence,
            "expected_cost": expected_cost(point, costs, prevalence),
            "expected_cost_at_half": expected_cost(operating_point(scores, labels, 0.5), costs, prevalence)}
        shortfall = cost_threshold_shortfall(labels, rules.min_positives, rules.min_negatives) if by_cost else None
        advice = {"recommended": shortfall is None, "reason": shortfall} if by_cost else {}
        return {"model": model, "version": number, "site": site, "site_threshold": record.threshold,
                "target_sensitivity": sensitivity, **point.as_dict(),
                **point_interval(scores, labels, threshold, costs, prevalence).as_dict(), **priced, **advice}

    @app.get("/v1/alerts")
    def alerts(_: Reader, model: Name | None = None, since: Time = 0.0, site: Name | None = None,
               kind: Annotated[str | None, Query(pattern=r"^[a-z]{1,20}\.[a-z]{1,20}$")] = None) -> list[dict]:
        """Alerts, oldest first; filters combine (site: the batch's site or "serving"; kind: e.g. drift.alert)."""
        found = events.alerts(model, since, site=site, kind=kind)
        return [e.model_dump() for e in found]

    @app.get("/v1/events")
    def list_events(model: Name, _: Reader, since: Time = 0.0) -> list[dict]:
        return [e.model_dump() for e in events.read(model, since)]

    @app.get("/v1/drift/{report_id}", response_model=None)
    def drift_report(request: Request, report_id: Annotated[str, Path(pattern=NAME_PATTERN.pattern)], _: Reader,
                     format: Literal["json", "html"] = "json") -> dict | Response:
        report = reg.reports.get_drift(report_id)
        if format == "html" and report.html_artifact:
            return stored_html(artifacts.get(report.html_artifact), request.headers.get("accept-encoding", ""))
        return report.model_dump()

    @app.post("/v1/predict", responses={200: {"description": "probabilities, labels, the version that answered"}})
    def predict(body: PredictRequest, model: Name | None = None) -> dict:
        """Predict (JSON, or an npz with `x` as application/octet-stream). Listed here for the API's one
        document: the proxy sends /v1/predict to the ModelServer application, never to this route."""
        raise NotFound("predictions are answered by the predict application at /v1/predict")

    @app.get("/v1/status")
    def status(_: Reader) -> dict:
        """Daemons with their last heartbeat, stuck batches, candidates abandoned by a process that died."""
        return pipeline_status(reg, cfg.stuck).model_dump(mode="json")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        reg.ping()
        return {"status": "ready"}

    @app.get("/metrics")
    def prometheus(_: Reader) -> Response:
        return Response(generate_latest(metric_registry), media_type=CONTENT_TYPE_LATEST)

    return app


class Gateway:
    """The Serve deployment around `create_app`."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServingConfig.model_validate(cfg)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.cfg)


def deployment(cfg: ServingConfig) -> serve.Deployment:
    return serve.deployment(name="Gateway", num_replicas=1, max_ongoing_requests=cfg.max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0})(serve.ingress()(Gateway))

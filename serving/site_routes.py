"""Sites and their batches: push a batch, follow it, register a site, its threshold and operating points.

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the routes.
"""

import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clreg.learner.operating import (
    Costs,
    cost_threshold_shortfall,
    expected_cost,
    operating_point,
    point_interval,
    threshold_for_cost,
    threshold_for_sensitivity,
)
from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.batches import token_sha256
from clreg.registry.errors import NotFound, RegistryError
from clreg.registry.findings import SiteCalibration
from clreg.registry.locked import overlaid
from clreg.registry.readiness import assess
from clreg.registry.records import BatchId, BatchStatus, ModelVersion, Name, Site
from clreg.serving.auth import bearer, matches
from clreg.serving.errors import BadRequest, Forbidden, NotReady, ServingError, Unprocessable
from clreg.serving.services import Admin, Reader, Svc, site_token

router = APIRouter()


class NewSite(BaseModel):
    name: Name
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    models: list[Name] | None = Field(default=None, max_length=1000)  # None: every model
    replay: bool = True  # its training samples may be remembered and replayed in later updates
    batches_per_day: int | None = Field(default=None, ge=1, le=10**9)  # None: the gateway's default
    max_bytes: int | None = Field(default=None, ge=1, le=2**62)


class NewThreshold(BaseModel):
    threshold: float | None = Field(ge=0.0, le=1.0)


@router.post("/v1/sites/{site}/batches", status_code=202)
async def push_batch(request: Request, svc: Svc, site_rec: Annotated[Site, Depends(site_token)],
                     model: Annotated[Name, Query()], locked: bool = False) -> JSONResponse:
    """Push a labelled batch; `locked=true`: a locked test set, never learnt, scored for every version."""
    try:
        batch, new = await svc.pushes.push(request, site_rec, model, locked)
    except (RegistryError, ServingError):
        svc.batch_counter.labels("refused").inc()
        raise
    svc.batch_counter.labels("accepted" if new else "duplicate").inc()
    return JSONResponse({"batch_id": batch.id, "status": "accepted" if new else "duplicate",
                         "samples": batch.samples, "locked": batch.locked}, status_code=202 if new else 200)


@router.get("/v1/batches/{batch_id}")
def batch_state(batch_id: BatchId, svc: Svc, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Where a batch is; for the ops or admin token, or the token of the site that pushed it."""
    reg = svc.registry
    role = svc.tokens.role(authorization)
    batch = reg.batches.get(batch_id)
    if role is None and not matches(bearer(authorization), reg.get_site(batch.site).token_sha256):
        raise Forbidden("this batch can be read with the ops or admin token, or its site's token")
    state = reg.batches.state(batch_id)
    served = svc.served(batch.model, state.version) if state.status is BatchStatus.PROMOTED else {}
    return {"batch_id": batch.id, "model": batch.model, "site": batch.site, "samples": batch.samples,
            **state.model_dump(), **served}


@router.get("/v1/sites")
def list_sites(svc: Svc, _: Reader) -> list[dict[str, Any]]:
    """Sites with what each pushed per model: batches, samples, class counts, prevalence, and whether the
    production version is validated there (`clreg sites report` says why)."""
    reg = svc.registry
    sites = reg.sites()
    names = [s.name for s in sites]
    models = reg.list_models()
    counts = {m: reg.batches.site_counts(m, names) for m in models}
    production = {m: (reg.get_model(m), reg.version_by_alias(m)) for m in models}
    ready = {m: (record, overlaid(reg, version_calibration(svc.artifacts, v), m, v.number) if v else None)
             for m, (record, v) in production.items()}  # a locked set's figures in place of held-out ones

    def validated(model: str, site: str) -> bool | None:
        record, calibration = ready[model]
        return assess(site, calibration, record.readiness, record.task_metric).validated \
            if production[model][1] else None

    return [{**s.model_dump(exclude={"token_sha256"}),
             "models": {m: {**c[s.name].model_dump(), "prevalence": c[s.name].prevalence,
                            "validated": validated(m, s.name)}
                        for m, c in counts.items() if s.name in c}} for s in sites]


@router.post("/v1/sites", status_code=201)
def add_site(body: NewSite, svc: Svc, _: Admin) -> dict[str, Any]:
    """Register a site: its token (returned once, stored hashed), the models it may push to, its quotas."""
    token = secrets.token_urlsafe(32)
    site = Site(name=body.name, token_sha256=token_sha256(token), threshold=body.threshold, models=body.models,
                replay=body.replay,
                batches_per_day=body.batches_per_day or svc.cfg.site_batches_per_day,
                max_bytes=body.max_bytes or svc.cfg.site_max_bytes)
    svc.registry.add_site(site)
    return {"site": body.name, "token": token, **site.model_dump(exclude={"token_sha256", "name"})}


@router.put("/v1/sites/{site}/threshold")
def set_threshold(site: Name, body: NewThreshold, svc: Svc, _: Admin) -> dict[str, Any]:
    """Set or clear (null) a site's decision threshold for binary models; replicas pick it up on their poll."""
    record = svc.registry.get_site(site).model_copy(update={"threshold": body.threshold})
    svc.registry.update_site(record)
    return record.model_dump(exclude={"token_sha256"})


def _site_calibration(artifacts: ArtifactStore, version: ModelVersion, site: str) -> SiteCalibration:
    """A site's calibration in a version, with the held-out scores that operating points need."""
    calibration = version_calibration(artifacts, version)
    cal = calibration.sites.get(site) if calibration else None
    if cal is None:
        raise NotFound(f"version {version.number} of {version.model} has no held-out data of site {site!r}")
    if cal.scores is None or cal.labels is None:
        raise Unprocessable("operating points are for binary models; this one has more than two classes")
    return cal


def _costs(cost_fp: float | None, cost_fn: float | None) -> Costs | None:
    if (cost_fp is None) != (cost_fn is None):
        raise BadRequest("give both cost_fp and cost_fn, or neither")
    return Costs(false_positive=cost_fp, false_negative=cost_fn) if cost_fp is not None and cost_fn is not None \
        else None


@router.get("/v1/sites/{site}/operating-point")
def site_operating_point(site: Name, model: Name, svc: Svc, _: Reader,
                         threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
                         sensitivity: Annotated[float | None, Query(gt=0, le=1)] = None,
                         cost_fp: Annotated[float | None, Query(ge=0)] = None,
                         cost_fn: Annotated[float | None, Query(ge=0)] = None,
                         prevalence: Annotated[float | None, Query(ge=0, le=1)] = None) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV at a threshold on the site's held-out set (production version).

    The threshold is the one given, else the one reaching the given sensitivity, else the one with the
    lowest expected cost for the given error costs, else the site's own. With costs, the expected cost per
    case at that threshold and at 0.5; prevalence is the held-out one unless given. Every figure comes with its
    95% bootstrap interval and the positives and negatives it rests on; a threshold chosen by cost on fewer
    than the model's min_positives / min_negatives is answered with "recommended": false and the reason.
    """
    record = svc.registry.get_site(site)
    rules = svc.registry.get_model(model).readiness  # 404 for a model that does not exist
    version = svc.registry.version_by_alias(model)
    if version is None:
        raise NotReady(f"model {model!r} has no production version")
    cal = _site_calibration(svc.artifacts, version, site)
    scores, labels = np.array(cal.scores), np.array(cal.labels)
    costs = _costs(cost_fp, cost_fn)
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
    return {"model": model, "version": version.number, "site": site, "site_threshold": record.threshold,
            "target_sensitivity": sensitivity, **point.as_dict(),
            **point_interval(scores, labels, threshold, costs, prevalence).as_dict(), **priced, **advice}

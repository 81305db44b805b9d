"""What ops read: alerts, events, drift reports, the pipeline's status, health, readiness and /metrics.

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the routes.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from clreg.registry.errors import NotFound
from clreg.registry.records import NAME_PATTERN, Name
from clreg.registry.status import pipeline_status
from clreg.serving.responses import stored_html
from clreg.serving.services import Reader, Svc, Time

router = APIRouter()


class PredictRequest(BaseModel):
    inputs: list[Any] = Field(description="images as nested lists [N, C, H, W] or [N, H, W], values in [0, 1]")
    site: Name | None = Field(default=None, description="the site asking: its BatchNorm, temperature, threshold")


@router.get("/v1/alerts")
def alerts(svc: Svc, _: Reader, model: Name | None = None, since: Time = 0.0, site: Name | None = None,
           kind: Annotated[str | None, Query(pattern=r"^[a-z]{1,20}\.[a-z]{1,20}$")] = None) -> list[dict[str, Any]]:
    """Alerts, oldest first; filters combine (site: the batch's site or "serving"; kind: e.g. drift.alert)."""
    found = svc.events.alerts(model, since, site=site, kind=kind)
    return [e.model_dump() for e in found]


@router.get("/v1/events")
def list_events(model: Name, svc: Svc, _: Reader, since: Time = 0.0) -> list[dict[str, Any]]:
    return [e.model_dump() for e in svc.events.read(model, since)]


@router.get("/v1/drift/{report_id}", response_model=None)
def drift_report(request: Request, report_id: Annotated[str, Path(pattern=NAME_PATTERN.pattern)], svc: Svc,
                 _: Reader, format: Literal["json", "html"] = "json") -> dict[str, Any] | Response:
    report = svc.registry.reports.get_drift(report_id)
    if format == "html" and report.html_artifact:
        return stored_html(svc.artifacts.get(report.html_artifact), request.headers.get("accept-encoding", ""))
    return report.model_dump()


@router.post("/v1/predict", responses={200: {"description": "probabilities, labels, the version that answered"}})
def predict(body: PredictRequest, model: Name | None = None) -> dict[str, Any]:
    """Predict (JSON, or an npz with `x` as application/octet-stream). Listed here for the API's one
    document: the proxy sends /v1/predict to the ModelServer application, never to this route."""
    raise NotFound("predictions are answered by the predict application at /v1/predict")


@router.get("/v1/status")
def status(svc: Svc, _: Reader) -> dict[str, Any]:
    """Daemons with their last heartbeat, stuck batches, candidates abandoned by a process that died."""
    return pipeline_status(svc.registry, svc.cfg.stuck).model_dump(mode="json")


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(svc: Svc) -> dict[str, Any]:
    svc.registry.ping()
    return {"status": "ready"}


@router.get("/metrics")
def prometheus(svc: Svc, _: Reader) -> Response:
    return Response(generate_latest(svc.metrics), media_type=CONTENT_TYPE_LATEST)

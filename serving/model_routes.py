"""Models and their versions: register a model, list and read versions, the aliases and their history.

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the routes.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from clreg.learner.models import check_factory, network_for
from clreg.registry.artifacts import version_calibration
from clreg.registry.errors import Conflict, NotFound
from clreg.registry.protocol import Protocols, standing
from clreg.registry.records import (
    ApprovalPolicy,
    CanaryPolicy,
    Digest,
    ErrorCosts,
    InputSpec,
    Metric,
    Model,
    Name,
    Normalisation,
    Readiness,
    ShadowPolicy,
    VersionStatus,
)
from clreg.serving import uploads
from clreg.serving.services import Admin, Reader, Svc, Time

router = APIRouter()


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


@router.get("/v1/models")
def list_models(svc: Svc, _: Reader) -> list[dict[str, Any]]:
    reg = svc.registry
    return [{**reg.get_model(m).model_dump(), "aliases": reg.aliases(m)} for m in reg.list_models()]


@router.post("/v1/models", status_code=201)
def create_model(body: NewModel, svc: Svc, _: Admin) -> dict[str, Any]:
    """Register a model; its factory must come from an allowed module and build, and uploaded `weights` must
    fit its network, or nothing is stored."""
    norm = body.normalisation or (uploads.default_normalisation(body.input.channels) if body.weights else None)
    model = Model(name=body.name, factory=body.factory, factory_kwargs=body.factory_kwargs, input=body.input,
                  readiness=body.readiness, shadow=body.shadow, normalisation=norm, metric=body.metric,
                  costs=body.costs, approval=body.approval, canary=body.canary)
    check_factory(model.factory, svc.cfg.factory_prefixes)
    net = network_for(model)  # it must build with its input spec before anything is stored
    if body.weights is not None:
        if body.name in svc.registry.list_models():  # before the checkpoint is converted and stored
            raise Conflict(f"model {body.name!r} already exists")
        model = model.model_copy(update=uploads.initial_weights(svc.artifacts, net, body.weights))
    svc.registry.create_model(model)
    Protocols(svc.registry, svc.events).revise(model, who="admin", reason="model created")  # its revision 1
    return model.model_dump()


@router.get("/v1/models/{name}/versions")
def list_versions(name: Name, svc: Svc, _: Reader, status: VersionStatus | None = None, site: Name | None = None,
                  parent: Annotated[int | None, Query(ge=1, le=2**53)] = None, since: Time | None = None,
                  until: Time | None = None) -> list[dict[str, Any]]:
    """Versions with status and aliases; filters combine (a learnt site; created_at in [since, until))."""
    svc.registry.get_model(name)
    views = svc.registry.list_versions(name, status, site=site, parent=parent, since=since, until=until)
    return [v.model_dump(mode="json") for v in svc.shadows.attach(name, views)]


@router.get("/v1/models/{name}/versions/{number}")
def get_version(name: Name, number: Annotated[int, Path(ge=1, le=2**53)], svc: Svc, _: Reader) -> dict[str, Any]:
    reg = svc.registry
    view = next((v for v in reg.list_versions(name) if v.version.number == number), None)
    if view is None:
        reg.get_version(name, number)  # raises NotFound with the right message
        raise NotFound(f"model {name!r} has no version {number}")
    view = svc.shadows.attach(name, [view])[0]
    gate = reg.reports.get_gate(view.gate_report_id).model_dump() if view.gate_report_id else None
    calibration = version_calibration(svc.artifacts, view.version)
    return {**view.model_dump(mode="json"), "gate_report": gate,
            "calibration": calibration.model_dump() if calibration else None,
            "protocol": standing(Protocols(reg, svc.events), name, view.version.lineage.protocol),
            **svc.served(name, number)}


@router.get("/v1/models/{name}/aliases")
def aliases(name: Name, svc: Svc, _: Reader) -> dict[str, Any]:
    svc.registry.get_model(name)
    log = svc.registry.alias_history(name, moves_only=False)  # moves and the approval steps between them
    return {"aliases": svc.registry.aliases(name), "history": [c.model_dump() for c in log if c.action == "moved"],
            "log": [c.model_dump() for c in log]}

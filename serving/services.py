"""The gateway's services: one object per process, built once from the serving config and kept on
`app.state`, where the module-level routes take it through FastAPI dependencies.

No `from __future__ import annotations` here: FastAPI must see the real dependency objects of the routes.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from prometheus_client import CollectorRegistry, Counter

from clreg.registry.approvers import Approvers
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.errors import NotFound
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.inputs import InputLog
from clreg.registry.records import Name, Site
from clreg.registry.replicas import Replicas
from clreg.registry.shadow import Shadows
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookStore
from clreg.serving import metrics
from clreg.serving.auth import Tokens, bearer, matches
from clreg.serving.config import ServingConfig
from clreg.serving.errors import Forbidden, Unauthorized
from clreg.serving.ingest import Ingest

# Epoch seconds in a query: finite, not before 1970, not past the year 5138.
Time = Annotated[float, Query(ge=0, le=1e11, allow_inf_nan=False)]


@dataclass(frozen=True)
class Services:
    """Everything a gateway route reads or writes, over one registry connection."""

    cfg: ServingConfig
    registry: RedisRegistry
    artifacts: ArtifactStore
    events: EventLog
    queue: IngestQueue
    inputs: InputLog
    tokens: Tokens
    replicas: Replicas
    shadows: Shadows
    webhooks: WebhookStore
    pushes: Ingest
    metrics: CollectorRegistry
    batch_counter: Counter

    @classmethod
    def build(cls, cfg: ServingConfig) -> "Services":
        registry = RedisRegistry(cfg.store)
        artifacts = ArtifactStore(cfg.artifacts_url)
        events, queue = EventLog(registry), IngestQueue(registry)
        queue.ensure_group()
        inputs = InputLog(cfg.store, cfg.inputs)
        metric_registry, batch_counter = metrics.build(registry, cfg.stuck, inputs, artifacts)
        return cls(cfg=cfg, registry=registry, artifacts=artifacts, events=events, queue=queue, inputs=inputs,
                   tokens=Tokens(cfg.admin_token_sha256, cfg.ops_token_sha256, Approvers(registry)),
                   replicas=Replicas(registry, cfg.beat_interval_s), shadows=Shadows(registry),
                   webhooks=WebhookStore(registry),
                   pushes=Ingest(cfg, registry, artifacts, events, queue), metrics=metric_registry,
                   batch_counter=batch_counter)

    def served(self, model: str, version: int | None) -> dict[str, Any]:
        """Whether every live replica answers with `version` (after "promoted", the swap may still be under way)."""
        serving, live = self.replicas.serving(model, version) if version is not None else (0, 0)
        return {"served": live > 0 and serving == live, "replicas": {"live": live, "serving": serving}}


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


def admin(svc: Svc, authorization: Annotated[str | None, Header()] = None) -> str:
    return svc.tokens.require_admin(authorization)


def reader(svc: Svc, authorization: Annotated[str | None, Header()] = None) -> str:
    return svc.tokens.require_reader(authorization)


def site_token(svc: Svc, site: Name, authorization: Annotated[str | None, Header()] = None) -> Site:
    """The site record the path names, when the bearer token is that site's."""
    token = bearer(authorization)
    try:
        record = svc.registry.get_site(site)
    except NotFound as e:
        raise Unauthorized(f"no site {site!r} holds this token") from e
    if not matches(token, record.token_sha256):
        raise Forbidden(f"this token is not allowed to push for site {site!r}")
    return record


Admin = Annotated[str, Depends(admin)]
Reader = Annotated[str, Depends(reader)]

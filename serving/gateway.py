"""Gateway: the FastAPI application for ingest and the ops API (everything but /v1/predict).

The routes live in modules of their own (site_routes, model_routes, ops_routes, and the change-control and
console routers), over one `Services` object per process. `create_app(cfg)` builds a plain FastAPI app;
`deployment(cfg)` wraps it for Ray Serve, which builds the app inside each replica (`__serve_build_asgi_app__`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from clreg.serving import (
    approval_pages,
    approvals,
    boundary,
    console,
    model_routes,
    ops_routes,
    protocols,
    site_routes,
    uploads,
    validation,
    webhooks,
    withdrawals,
)
from clreg.serving.config import ServingConfig
from clreg.serving.services import Services

ROUTERS = (webhooks.router, validation.router, withdrawals.router, approval_pages.router, approvals.router,
           protocols.router, console.router, site_routes.router, model_routes.router, ops_routes.router)


def create_app(cfg: ServingConfig) -> FastAPI:
    """The gateway's routes over one set of services (serving/services.py), kept on app.state."""
    app = FastAPI(title="clreg", version="0.1.0", description="Continual-learning model registry")
    boundary.install(app, cfg.allowed_hosts)
    svc = Services.build(cfg)
    app.state.services = svc
    for routes in ROUTERS:
        app.include_router(routes)
    uploads.install(app, uploads.Uploads(svc.artifacts, svc.tokens, cfg.max_weights_bytes))
    return app


class Gateway:
    """The Serve deployment around `create_app`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = ServingConfig.model_validate(cfg)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.cfg)


def deployment(cfg: ServingConfig) -> serve.Deployment:
    return serve.deployment(name="Gateway", num_replicas=1, max_ongoing_requests=cfg.max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0})(serve.ingress()(Gateway))

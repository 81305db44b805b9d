"""Start Ray Serve on loopback and run the two applications behind its one proxy."""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from clreg.serving import gateway, model_server
from clreg.serving.config import ServingConfig

PREDICT_APP, GATEWAY_APP = "predict", "gateway"
# Serve routes by longest prefix, so the ModelServer takes /v1/predict itself (one replica hop per prediction)
# and the gateway takes everything else. A Serve config file (deploy/k8s/rayservice.yaml) names the same.
ROUTES = {PREDICT_APP: "/v1/predict", GATEWAY_APP: "/"}


def applications(cfg: ServingConfig) -> dict[str, Application]:
    """Both applications bound to this configuration, by name: what `start` runs and what the import-path
    builders in clreg.serve_apps hand to a Serve config."""
    payload = cfg.model_dump(mode="json")
    return {PREDICT_APP: model_server.deployment(cfg).bind(payload),
            GATEWAY_APP: gateway.deployment(cfg).bind(payload)}


def start(cfg: ServingConfig) -> None:
    """Deploy both applications; returns when both are ready."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, proxy_location=cfg.proxy_location,
                logging_config={"log_level": "WARNING"})
    for name, app in applications(cfg).items():
        serve.run(app, name=name, route_prefix=ROUTES[name], blocking=False)


def stop() -> None:
    serve.shutdown()  # type: ignore[no-untyped-call]

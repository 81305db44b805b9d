"""Start Ray Serve on loopback and run the two applications behind its one proxy."""

from __future__ import annotations

from ray import serve

from clreg.serving import gateway, model_server
from clreg.serving.config import ServingConfig

PREDICT_APP, GATEWAY_APP = "predict", "gateway"


def start(cfg: ServingConfig) -> None:
    """Deploy both applications; returns when both are ready.

    Serve routes by longest prefix, so the ModelServer takes /v1/predict itself (one replica hop per
    prediction) and the gateway takes everything else.
    """
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, proxy_location=cfg.proxy_location,
                logging_config={"log_level": "WARNING"})
    payload = cfg.model_dump(mode="json")
    serve.run(model_server.deployment(cfg).bind(payload), name=PREDICT_APP, route_prefix="/v1/predict",
              blocking=False)
    serve.run(gateway.deployment(cfg).bind(payload), name=GATEWAY_APP, route_prefix="/", blocking=False)


def stop() -> None:
    serve.shutdown()

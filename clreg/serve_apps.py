"""The Serve applications as import paths, for a Serve config file: what `clreg serve` deploys, built by Serve.

A Serve config (a KubeRay RayService's serveConfigV2, or `serve deploy config.yaml`) names each application by an
import path, which Serve imports and builds inside the cluster; `clreg serve` instead builds them in its own
process and sends them. Both build them the same way (serving.deploy.applications):

    - name: predict                           - name: gateway
      import_path: clreg.serve_apps:predict     import_path: clreg.serve_apps:gateway
      route_prefix: /v1/predict                 route_prefix: /

Each builder reads Settings from the environment of the process Serve builds it in (a Ray worker, which has its
node's environment: on Kubernetes, every Ray pod's CLREG_ variables). The admin and ops tokens are given as their
sha256 digests, CLREG_SERVE__ADMIN_TOKEN_SHA256 and CLREG_SERVE__OPS_TOKEN_SHA256, so that the cluster holds no
usable token; without them the home's tokens (CLREG_HOME/tokens.json) are used, as `clreg serve` does, which only
makes sense on one machine. Nothing here connects to Redis or Ray: a Redis that is away is the replicas' 503.
"""

from __future__ import annotations

import re
from typing import Any

from ray.serve import Application

from clreg import embedded
from clreg.serving import deploy
from clreg.serving.config import ServingConfig
from clreg.settings import Settings

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
DIGEST_VARIABLES = {"admin_token_sha256": "CLREG_SERVE__ADMIN_TOKEN_SHA256",
                    "ops_token_sha256": "CLREG_SERVE__OPS_TOKEN_SHA256"}


def serving_config(settings: Settings) -> ServingConfig:
    """The serving settings as `clreg serve` makes them, with the token digests from the settings when given."""
    store = settings.redis.store(embedded.redis_url(settings))
    given = {field: getattr(settings.serve, field) for field in DIGEST_VARIABLES}
    if not any(given.values()):
        return embedded.serving_config(settings, store, embedded.secrets(settings.home))
    wrong = [DIGEST_VARIABLES[field] for field, value in given.items() if not SHA256_HEX.fullmatch(value)]
    if wrong:  # a placeholder left in the Secret, or one digest without the other: refuse rather than lock out
        raise ValueError(f"{', '.join(wrong)} must be the sha256 hex digest (64 of 0-9, a-f) of the token, as "
                         "`printf %s \"$TOKEN\" | sha256sum` prints it; set both digests or neither")
    return embedded.serving_config(settings, store, None)


def predict(args: dict[str, Any]) -> Application:
    """The ModelServer application (route /v1/predict), from the environment's settings."""
    return _built(deploy.PREDICT_APP, args)


def gateway(args: dict[str, Any]) -> Application:
    """The FastAPI gateway application (route /), from the environment's settings."""
    return _built(deploy.GATEWAY_APP, args)


def _built(name: str, args: dict[str, Any]) -> Application:
    """One application; Serve passes a config's `args`, which clreg does not take: settings come from the
    environment only, so that a secret never sits in the config (which Ray stores and shows)."""
    if args:
        raise ValueError(f"the {name} application takes no args ({', '.join(sorted(args))}); "
                         "set CLREG_ variables on the Ray nodes instead")
    return deploy.applications(serving_config(Settings()))[name]

"""The serving layer's own settings, handed to each replica as a plain dict."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clreg.registry.connection import StoreConfig
from clreg.registry.inputs import InputLogConfig
from clreg.registry.status import StuckRule
from clreg.registry.webhooks import WebhookConfig
from clreg.serving.guard import LOOPBACK_HOSTS


class Autoscaling(BaseModel):
    """Ray Serve's autoscaling of the ModelServer replicas (replaces the fixed `replicas` when set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)  # per replica; Serve adds replicas above it
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class ServeSettings(BaseModel):
    """What ops set for serving (CLREG_SERVE__*). What serving shares with the rest of the stack (its store,
    artifacts, held-out split, input log, webhook allow-list, stuck rule) has its own settings, and
    `ServingConfig` adds it from them: one variable per setting, none overwritten after it is read."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8000
    # Where Serve runs its HTTP proxy: on every node (Serve's default; a load balancer in front spreads the
    # clients) or the head node only (one address; also what several nodes on one host need, as they
    # cannot all bind the same port).
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    replicas: int = Field(default=1, ge=1)
    # None: every replica loads every model. N: replicas load a model at its first request through Serve's
    # model multiplexing, keep the N most recently used, and requests naming a model (the
    # serve_multiplexed_model_id header, which clreg's client sends) go to replicas that hold it.
    models_per_replica: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None  # CLREG_SERVE__AUTOSCALING__MAX_REPLICAS=4 etc.; None: fixed `replicas`
    # Serve's default of 5 collapses throughput beyond 5 clients per replica (measured): keep it high.
    max_ongoing_requests: int = Field(default=64, ge=1)
    poll_interval_s: float = Field(default=0.1, gt=0)
    beat_interval_s: float = Field(default=1.0, gt=0)  # replicas say what they serve (a batch is then "served")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_weights_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # an uploaded checkpoint (POST /v1/artifacts)
    max_samples: int = Field(default=10_000, ge=1)
    max_unzipped_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # a DICOM zip, inflated
    admin_token_sha256: str = ""
    ops_token_sha256: str = ""  # the read-only token: every GET route but health, readiness and docs
    # Host headers served (any port); anything else is refused, so a web page cannot reach the API through
    # DNS rebinding. Add the names a proxy or the cluster uses to reach clreg.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    predict_needs_token: bool = False  # True: /v1/predict needs the ops or admin token too
    predict_max_samples: int = Field(default=1024, ge=1)
    predict_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_inflated_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # a pushed npz's arrays, inflated
    # Model factories may come only from these modules (or modules below them).
    factory_prefixes: tuple[str, ...] = ("clreg.learner.models",)
    site_batches_per_day: int = Field(default=1000, ge=1)  # a new site's quotas unless given when it is added
    site_max_bytes: int = Field(default=10 * 2**30, ge=1)
    keep_dicom_source: bool = False  # True: keep a pushed DICOM study, de-identified (an allow-list of attributes)
    torch_threads: int = Field(default=1, ge=1)
    # Requests per forward pass (1: no batching) and how long a batch waits to fill (0: opportunistic).
    # Off by default: on CPU replicas it did not pay (bench/serving.py); a GPU replica is where it does.
    batch_max_requests: int = Field(default=1, ge=1)
    batch_wait_s: float = Field(default=0.0, ge=0, le=1)
    replica_gpus: float = Field(default=0.0, ge=0)  # GPUs Ray reserves per ModelServer replica (fractions share one)
    record_interval_s: float = Field(default=0.5, gt=0, le=60)  # replicas write what they kept this often
    # Where the console links to `evidently ui` on the home's workspace (README: Ops console); "" hides the link
    evidently_ui_url: str = "http://127.0.0.1:8001"


class ServingConfig(ServeSettings):
    """What each replica and the gateway are handed: the serving settings and what the running stack adds from
    its other settings (built in one place, clreg.embedded.serving_config)."""

    store: StoreConfig = StoreConfig()
    artifacts_url: str = ".clreg/artifacts"
    heldout_fraction: float = Field(default=0.3, gt=0, lt=1)
    inputs: InputLogConfig = InputLogConfig()  # prediction inputs kept for the scheduled drift check
    webhooks: WebhookConfig = WebhookConfig()  # the allow-list new subscriptions are checked against
    stuck: StuckRule = StuckRule()  # when GET /v1/status and /metrics report a batch as stuck

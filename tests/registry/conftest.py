"""The registry tests' switch between one Redis and a Redis Cluster.

A test module that sets `ON_CLUSTER = True` runs each of its tests that take `registry` or `store_cfg` twice:
on the tests' Redis ([redis]) and on a three-primary Redis Cluster of valkey-server processes ([cluster]),
started once per session on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clreg.registry.store import StoreConfig
from tests.registry.sentinel_cluster import ClusterSetup, start_cluster

BACKENDS = ("redis", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.module, "ON_CLUSTER", False) and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def store_cfg(backend: str, request: pytest.FixtureRequest) -> StoreConfig:
    if backend == "cluster":
        return request.getfixturevalue("redis_cluster").store("clreg-test")
    return StoreConfig(url=request.getfixturevalue("redis_url"), prefix="clreg-test")

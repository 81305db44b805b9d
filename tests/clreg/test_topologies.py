"""The whole stack on Redis topologies other than one server, each through `clreg up` as a user runs it.

Sentinel: `clreg up` (its daemon, gateway and Serve replicas, its Ray workers) on a
primary with two replicas and three sentinels (valkey-server processes on loopback); the primary is SIGKILLed
while an update trains and clients predict. Every process finds the new primary, the update finishes, every
batch answered 202 is still there, and the predicting clients' failures are counted (run with -s to see them;
docs/operations/cluster.md quotes them).
Cluster: on a three-primary Redis Cluster, a push is learnt, promoted and answered by /v1/predict."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clreg.client import Client, npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.store import RedisRegistry
from tests.clreg.processes import Child, Prober, up_env
from tests.registry.sentinel_cluster import (
    MASTER,
    PASSWORD,
    SENTINEL_PASSWORD,
    ClusterSetup,
    SentinelSetup,
    free_port,
    start_cluster,
    start_sentinel,
    wait_for,
)

pytestmark = pytest.mark.integration
MODEL = "digits"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = start_sentinel(tmp_path / "redis", replicas=2)
    yield setup
    setup.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    setup = start_cluster(tmp_path / "cluster")
    yield setup
    setup.stop()


def _sentinel_env(setup: SentinelSetup, home: Path, port: int) -> dict[str, str]:
    return up_env(home, port, redis__url=f"redis://:{PASSWORD}@127.0.0.1/0", redis__prefix="failover",
                  redis__sentinels=",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels),
                  redis__sentinel_master=MASTER, redis__sentinel_password=SENTINEL_PASSWORD)


def _started(up: Child, url: str, home: Path) -> Client:
    wait_for(lambda: "clreg is up" in up.output(), 180, f"clreg up:\n{up.output()[-3000:]}")
    client = Client(url)
    client.admin_token = client.token = json.loads((home / "tokens.json").read_text())["admin"]
    return client


def _status(client: Client, batch_id: str) -> str:
    try:
        return str(client.get(f"/v1/batches/{batch_id}")["status"])
    except Exception:  # noqa: BLE001 - the gateway may answer 503 while Redis fails over: ask again
        return "unknown"


def test_the_stack_rides_out_a_primary_killed_during_an_update(sentinel: SentinelSetup, tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    up = Child(["up"], _sentinel_env(sentinel, home, port), tmp_path / "up.log")
    try:
        client = _started(up, url, home)
        base, contrast = digits_sites(seed=3, names=("base", "contrast"))
        client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
        tokens = {s.name: client.add_site(s.name)["token"] for s in (base, contrast)}
        first = client.push("base", tokens["base"], npz_bytes(to_uint8(base.x[:300]), base.y[:300]), MODEL)
        assert client.wait_batch(first["batch_id"], timeout_s=180)["status"] == "promoted"
        with Prober(url, MODEL, base.x[:2], clients=2) as probe:
            time.sleep(2)
            second = client.push("contrast", tokens["contrast"],
                                 npz_bytes(to_uint8(contrast.x[:300]), contrast.y[:300]), MODEL)
            wait_for(lambda: _status(client, second["batch_id"]) == "training", 120, "training")
            old = sentinel.primary_port()
            killed = time.monotonic()
            next(s for s in sentinel.servers() if s.port == old).kill()
            moved_s = wait_for(lambda: sentinel.primary_port() != old, 60, "a new primary")
            wait_for(lambda: _status(client, second["batch_id"]) in ("promoted", "rejected", "failed"), 240,
                     f"the update's verdict after the failover:\n{up.output()[-4000:]}")
            took_s = time.monotonic() - killed
            time.sleep(2)
        state = client.get(f"/v1/batches/{second['batch_id']}")
        print(f"\nfailover: new primary after {moved_s:.1f} s, verdict {took_s:.1f} s after the kill; "
              f"predictions {probe.total}, failed {probe.failures} {dict(probe.outcomes)}")
        assert state["status"] == "promoted" and state["version"] >= 2, state
        assert up.proc.poll() is None  # every process carried on
        stored = RedisRegistry(sentinel.store("failover"))
        assert {b.id for b in stored.batches.of_model(MODEL)} == {first["batch_id"], second["batch_id"]}
        assert stored.resolve(MODEL) == state["version"]
        assert probe.total > 50 and probe.failures <= probe.total // 20, dict(probe.outcomes)  # the goal is 0
    finally:
        code = up.terminate(timeout_s=60)
    assert code == 0, up.output()[-3000:]


def test_a_push_is_learnt_promoted_and_served_on_a_redis_cluster(cluster: ClusterSetup, tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    env = up_env(home, port, redis__url=cluster.url, redis__cluster="true", redis__prefix="e2e")
    up = Child(["up"], env, tmp_path / "up.log")
    try:
        client = _started(up, url, home)
        base = digits_sites(seed=4, names=("base",))[0]
        client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
        token = client.add_site("base")["token"]
        pushed = client.push("base", token, npz_bytes(to_uint8(base.x[:300]), base.y[:300]), MODEL)
        state = client.wait_batch(pushed["batch_id"], timeout_s=180)
        assert (state["status"], state["version"], state.get("served")) == ("promoted", 1, True), state
        answer, served = client.predict(base.x[:3], MODEL, site="base")
        assert served == 1 and len(answer["probabilities"]) == 3 and answer["site"] == "base"
        stored = RedisRegistry(cluster.store("e2e"))
        assert stored.resolve(MODEL) == 1 and [b.id for b in stored.batches.of_model(MODEL)] == [pushed["batch_id"]]
    finally:
        code = up.terminate(timeout_s=60)
    assert code == 0, up.output()[-3000:]

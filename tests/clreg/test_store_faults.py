"""Redis and Ray failing under a running daemon.

- The embedded Valkey, with the settings `clreg up` ships (append-only file, fsync every second), is killed
  with SIGKILL while an update trains and a batch was acknowledged a moment before, then started again on
  its data: every acknowledged record is byte-identical afterwards (DUMP), and the update finishes.
- A Ray worker killed while it trains is replaced and the training retried; killed twice, the batch fails
  with the reason, an update.failed alert is raised, and the daemon goes on with the next batch.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from clreg import context
from clreg.client import npz_bytes
from clreg.daemon import Daemon
from clreg.embedded import start_valkey
from clreg.home import Home
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest
from clreg.registry.connection import StoreConfig
from clreg.registry.events import IngestQueue
from clreg.registry.records import FINAL_BATCH, BatchStatus, InputSpec, Model
from clreg.registry.store import RedisRegistry
from clreg.settings import DaemonConfig, RedisSettings, SearchConfig, Settings
from tests import cheap
from tests.clreg import processes

pytestmark = pytest.mark.integration
SPEC = InputSpec(channels=1, height=16, width=16, classes=10)
IMMUTABLE = (":batch:", ":model:m:v:", ":site:")  # records written once: they must survive byte for byte


def _until(check, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.1)


def _dump(store: StoreConfig) -> dict[str, bytes]:
    """DUMP of every write-once record under the prefix (a binary client: DUMP's payload is not text)."""
    client = redis.Redis.from_url(store.url)
    keys = [k.decode() for k in client.scan_iter(match=f"{store.prefix}:*")]
    return {k: client.dump(k) for k in keys if any(p in k for p in IMMUTABLE) and not k.endswith(":state")}


def _ingest(registry: RedisRegistry, ctx: context.Context, site: str, x, y) -> str:  # noqa: ANN001
    batch, new = ingest(registry, ctx.artifacts, IngestQueue(registry), ctx.events, "m", site,
                        npz_bytes(to_uint8(x), y), Limits())
    assert new
    return batch.id


def test_valkey_killed_mid_update_loses_nothing_acknowledged(tmp_path: Path, ray_session: None) -> None:
    home = Home(tmp_path / "home")
    home.create()
    password = home.secrets()["valkey"]
    valkey = start_valkey(home, password, [])
    store = StoreConfig(url=valkey.url, prefix="faults")
    settings = Settings(home=home.path, redis=RedisSettings(url=valkey.url, prefix="faults"),
                        train=TrainConfig(epochs=25))
    ctx = context.build(settings, store, "http://127.0.0.1:0")
    registry = ctx.registry
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    IngestQueue(registry).ensure_group()
    env = processes.role_env(store, home.path, train__epochs="25", **cheap.ENV)
    daemon = processes.Child(["daemon", "--name", "survivor"], env, tmp_path / "daemon.log")
    try:
        base, contrast = digits_sites(seed=5, names=("base", "contrast"))
        first = _ingest(registry, ctx, "base", base.x[:300], base.y[:300])
        _until(lambda: registry.batches.state(first).status is BatchStatus.TRAINING, 90, "training")
        second = _ingest(registry, ctx, "contrast", contrast.x[:300], contrast.y[:300])  # acknowledged ...
        before = _dump(store)
        os.kill(valkey.pid, signal.SIGKILL)  # ... and the server killed right after
        time.sleep(1.5)  # the daemon meets a dead Redis
        valkey = start_valkey(home, password, [])
        after = _dump(store)
        assert {k for k in before if second[:16] in k} and after == before
        fresh = RedisRegistry(store)
        _until(lambda: all(fresh.batches.state(b).status in FINAL_BATCH for b in (first, second)), 180,
               f"both batches final:\n{daemon.output()[-3000:]}")
        assert daemon.proc.poll() is None  # it waited for Redis and carried on
        states = [fresh.batches.state(b) for b in (first, second)]
        assert [s.status for s in states] == [BatchStatus.PROMOTED, BatchStatus.PROMOTED]
        assert daemon.terminate() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        valkey.stop()


def _killer(kills: int, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first `kills` distinct Ray workers seen running a training task."""
    while not stop.is_set() and len(killed) < kills:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            pid = int(entry.name)
            if title.startswith(b"ray::_update_task") and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.02)


def test_a_killed_training_worker_is_retried_and_a_second_death_fails_the_batch(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        train=TrainConfig(epochs=25), search=SearchConfig(candidates=[{}], refit=False))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    daemon = Daemon(ctx, DaemonConfig(name="ray-faults"))  # one candidate: one task, whose worker is killed
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    sites = digits_sites(seed=6, names=("base", "contrast", "blur-noise"))
    outcomes = []
    try:
        for site, kills in zip(sites, (1, 2, 0), strict=True):
            stop, killed = threading.Event(), []
            killer = threading.Thread(target=_killer, args=(kills, stop, killed))
            killer.start()
            batch_id = _ingest(registry, ctx, site.name, site.x[:300], site.y[:300])
            _until(lambda b=batch_id: registry.batches.state(b).status in FINAL_BATCH, 180, f"{site.name} final")
            stop.set()
            killer.join()
            outcomes.append((len(killed), registry.batches.state(batch_id)))
    finally:
        daemon.stop()
        thread.join(60)
    (once, retried), (twice, failed), (_, after) = outcomes
    assert once == 1 and retried.status is BatchStatus.PROMOTED
    assert twice == 2 and failed.status is BatchStatus.FAILED and "died" in failed.detail.lower()
    assert [a.data["batches"] for a in ctx.events.alerts("m", kind="update.failed")] == [[failed_id(ctx, sites[1])]]
    assert after.status is BatchStatus.PROMOTED  # the daemon went on


def failed_id(ctx: context.Context, site) -> str:  # noqa: ANN001
    return next(b.id for b in ctx.registry.batches.of_model("m") if b.site == site.name)

"""The Ray wrapper: resource selection (pure) and a real local Ray run (integration, on the session Ray)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clreg.learner.errors import TrainingFailed
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import DEFAULT_FACTORY, build_model
from clreg.learner.remote import resource_request
from clreg.learner.sitebn import bank_from_bytes
from clreg.learner.train import TrainConfig, train_site
from tests.learner.one_candidate import train_on_ray

CFG = TrainConfig(epochs=1, batch_size=16, fisher_samples=16)
SPEC = (1, 16, 16, 10)


def test_resource_request_picks_gpu_only_when_the_cluster_has_one() -> None:
    assert resource_request({"CPU": 8.0, "GPU": 1.0}) == {"num_cpus": 1, "num_gpus": 1, "max_retries": 1}
    assert resource_request({"CPU": 8.0, "GPU": 0.5})["num_gpus"] == 0
    assert resource_request({"CPU": 2.0})["num_gpus"] == 0
    pinned = resource_request({"CPU": 2.0, "trainer": 1.0}, resource="trainer")
    assert pinned["resources"] == {"trainer": 0.01} and pinned["num_gpus"] == 0  # pinned, not serialised
    assert "resources" not in resource_request({"CPU": 2.0, "GPU": 1.0, "trainer": 1.0}, resource="trainer")
    with pytest.raises(TrainingFailed, match="no node of the Ray cluster offers the resource 'trainer'"):
        resource_request({"CPU": 2.0}, resource="trainer")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((32, 1, 16, 16), dtype=np.float32), rng.integers(0, 10, 32)


@pytest.mark.integration
def test_train_on_ray_matches_local_training(ray_session: None) -> None:
    assert resource_request()["num_gpus"] == 0  # this machine has no GPU
    x, y = _data()
    remote = train_on_ray(DEFAULT_FACTORY, {}, SPEC, None, None, x, y, "a", CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1-CPU Ray task runs torch on one thread; float sums depend on it
    try:
        torch.manual_seed(CFG.seed)  # the task seeds a fresh model the same way
        local = train_site(build_model(DEFAULT_FACTORY, {}, *SPEC), x, y, "a", EWCState(), CFG)
    finally:
        torch.set_num_threads(threads)
    assert remote.weights == local.weights and remote.ewc_state == local.ewc_state
    second = train_on_ray(DEFAULT_FACTORY, {}, SPEC, remote.weights, remote.ewc_state, x, y, "b", CFG)
    assert state_from_bytes(second.ewc_state).sites == ["a", "b"] and second.device == "cpu"


@pytest.mark.integration
def test_train_on_ray_translates_task_errors(ray_session: None) -> None:
    x, y = _data()
    with pytest.raises(TrainingFailed, match="DataError: labels must lie in 0..9"):
        train_on_ray(DEFAULT_FACTORY, {}, SPEC, None, None, x, y + 10, "a", CFG)
    with pytest.raises(TrainingFailed, match="ModelFactoryError"):
        train_on_ray("clreg.learner.models:nothing", {}, SPEC, None, None, x, y, "a", CFG)


@pytest.mark.integration
def test_progress_is_relayed_while_the_task_runs(ray_session: None) -> None:
    x, y = _data()
    rows: list[dict] = []
    arrived: list[float] = []

    def relay(row: dict) -> None:
        rows.append(row)
        arrived.append(time.monotonic())

    cfg = CFG.model_copy(update={"epochs": 3})
    # two forward passes an epoch of at least 1 s each: epochs 2 and 3 take >= 4 s after epoch 1's row is made,
    # room for the relay actor's own start (a new worker, seconds on a busy machine)
    result = train_on_ray("tests.learner.factories:slow", {"pause_s": 1.0}, SPEC, None, None, x, y, "a", cfg,
                          progress=relay, poll_s=0.05)
    returned = time.monotonic()
    assert rows == result.curve and [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {"epoch", "epochs", "loss", "ce", "replay", "penalty", "seconds"} for r in rows)
    assert returned - arrived[0] >= 1.0, (returned - arrived[0])  # epoch 1's row came while the task ran


@pytest.mark.integration
def test_per_site_bank_travels_through_ray(ray_session: None) -> None:
    x, y = _data()
    cfg = CFG.model_copy(update={"bn_policy": "per_site"})
    first = train_on_ray(DEFAULT_FACTORY, {}, SPEC, None, None, x, y, "a", cfg)
    second = train_on_ray(DEFAULT_FACTORY, {}, SPEC, first.weights, first.ewc_state, x, y, "b", cfg,
                          bn_bank=first.bn_bank)
    assert first.bn_bank is not None and sorted(bank_from_bytes(second.bn_bank)) == ["a", "b"]
    shared = CFG.model_copy(update={"bn_policy": "freeze"})
    assert train_on_ray(DEFAULT_FACTORY, {}, SPEC, None, None, x, y, "a", shared).bn_bank is None


@pytest.mark.integration
def test_a_killed_task_is_retried_once_then_reported_failed(ray_session: None, tmp_path: Path) -> None:
    x, y = _data()
    marker = tmp_path / "tries"
    with pytest.raises(TrainingFailed, match="failed in Ray: .*WorkerCrashedError"):
        train_on_ray("tests.learner.factories:dies", {"marker": str(marker)}, SPEC, None, None, x, y, "a", CFG)
    assert marker.read_text().splitlines() == ["try", "try"]

"""The Ray wrapper: resource selection (pure) and a real local Ray run (integration, on the session Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.errors import TrainingFailed
from learner.ewc import EWCState, state_from_bytes
from learner.models import DEFAULT_FACTORY, build_model
from learner.remote import resource_request, train_on_ray
from learner.train import TrainConfig, train_site

CFG = TrainConfig(epochs=1, batch_size=16, fisher_samples=16)
SPEC = (1, 16, 16, 10)


def test_resource_request_picks_gpu_only_when_the_cluster_has_one() -> None:
    assert resource_request({"CPU": 8.0, "GPU": 1.0}) == {"num_cpus": 1, "num_gpus": 1, "max_retries": 1}
    assert resource_request({"CPU": 8.0, "GPU": 0.5})["num_gpus"] == 0
    assert resource_request({"CPU": 2.0})["num_gpus"] == 0


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
        train_on_ray("learner.models:nothing", {}, SPEC, None, None, x, y, "a", CFG)

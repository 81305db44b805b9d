"""Batched inference: each request's answer equals its own forward pass, whatever else shares the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clreg.learner.answer import Answerer
from clreg.learner.models import small_cnn
from clreg.registry.connection import StoreConfig
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.records import InputSpec
from clreg.serving.inference import Job, Loaded, infer

SPEC = InputSpec(channels=1, height=16, width=16, classes=10)


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_cnn(1, 16, 16, 10).eval()


def _cal(temperature: float) -> SiteCalibration:
    return SiteCalibration(temperature=temperature, samples=50, ece=0.1, ece_calibrated=0.05, nll=0.5,
                           nll_calibrated=0.4)


def test_a_mixed_batch_answers_each_request_as_alone() -> None:
    a, b = _net(1), _net(2)
    calibration = Calibration(model="m", sites={"a": _cal(0.5), "b": _cal(2.0)}, pooled=_cal(1.5))
    loaded = Loaded(version=3, answerer=Answerer(module=a, sites={"a": a, "b": b}, calibration=calibration), spec=SPEC)
    old = Loaded(version=2, answerer=Answerer(module=b), spec=SPEC)  # admitted before a swap: temperature 1
    gen = torch.Generator().manual_seed(0)
    jobs = [Job(loaded, torch.rand(n, 1, 16, 16, generator=gen), site)
            for n, site in ((3, "a"), (1, "b"), (2, "a"), (4, "b"))]
    jobs.append(Job(old, torch.rand(2, 1, 16, 16, generator=gen), "a"))
    scores = infer(jobs)
    expected_nets, expected_t = [a, b, a, b, b], [0.5, 2.0, 0.5, 2.0, 1.0]
    with torch.no_grad():
        for job, got, net, t in zip(jobs, scores, expected_nets, expected_t, strict=True):
            want = torch.softmax(net(job.x) / t, dim=1).numpy()
            np.testing.assert_allclose(got.probabilities, want, rtol=1e-5, atol=1e-6)
            assert got.temperature == t and got.probabilities.shape == (len(job.x), 10)
    assert [s.temperature_site for s in scores] == ["a", "b", "a", "b", None]
    assert [s.bn_site for s in scores] == ["a", "b", "a", "b", None]


def test_an_unknown_site_without_a_bank_gets_the_pooled_temperature() -> None:
    net = _net(3)
    calibration = Calibration(model="m", sites={"a": _cal(0.5)}, pooled=_cal(1.5))
    loaded = Loaded(version=1, answerer=Answerer(module=net, calibration=calibration), spec=SPEC)
    x = torch.rand(2, 1, 16, 16)
    named, unknown = infer([Job(loaded, x, "a"), Job(loaded, x, "zz")])
    assert (named.temperature_site, named.temperature) == ("a", 0.5)
    assert (unknown.temperature_site, unknown.temperature) == (None, 1.5)
    with torch.no_grad():
        np.testing.assert_allclose(unknown.probabilities, torch.softmax(net(x) / 1.5, dim=1).numpy(), rtol=1e-5)


def test_gpu_replicas_ask_ray_for_a_gpu_and_fall_back_to_cpu_without_one(store_cfg: StoreConfig,
                                                                        tmp_path: Path) -> None:
    from clreg.serving.config import ServingConfig
    from clreg.serving.model_server import ModelServer, deployment

    assert deployment(ServingConfig()).ray_actor_options["num_gpus"] == 0
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), replica_gpus=0.5)
    assert deployment(cfg).ray_actor_options["num_gpus"] == 0.5
    server = ModelServer(cfg.model_dump(mode="json"))
    try:
        assert server.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    finally:
        server.close()


def test_autoscaling_settings_reach_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from clreg.serving.model_server import deployment
    from clreg.settings import Settings

    assert deployment(Settings().serve).num_replicas == 1  # fixed by default
    monkeypatch.setenv("CLREG_SERVE__AUTOSCALING__MAX_REPLICAS", "3")
    monkeypatch.setenv("CLREG_SERVE__AUTOSCALING__TARGET_ONGOING_REQUESTS", "2")
    scaled = deployment(Settings().serve)
    config = scaled._deployment_config.autoscaling_config  # what Serve will scale by
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (1, 3, 2.0)
    monkeypatch.setenv("CLREG_SERVE__AUTOSCALING__MIN_REPLICAS", "5")
    with pytest.raises(ValueError, match="min_replicas 5 is above max_replicas 3"):
        Settings()

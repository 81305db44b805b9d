"""Models: factory loading, embeddings, safetensors weights, input conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clreg.learner.errors import DataError, ModelFactoryError, WeightsError
from clreg.learner.evaluate import site_metrics
from clreg.learner.ewc import EWCState
from clreg.learner.models import (
    DEFAULT_FACTORY,
    build_model,
    embed,
    encoder_to_bytes,
    load_weights,
    pretrained_cnn,
    small_cnn,
    to_tensor,
    weights_to_bytes,
)
from clreg.learner.streams import digits_sites
from clreg.learner.train import TrainConfig, train_site


def test_default_factory_builds_small_cnn_with_linear_head() -> None:
    model = build_model(DEFAULT_FACTORY, {}, 1, 16, 16, 10)
    assert isinstance(list(model.modules())[-1], nn.Linear)
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_factory_kwargs_are_passed() -> None:
    wide = build_model(DEFAULT_FACTORY, {"width_mult": 2}, 3, 20, 24, 4)
    assert wide(torch.rand(2, 3, 20, 24)).shape == (2, 4)
    assert wide[0][0].out_channels == 32


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("clreg.learner.models", "invalid factory"),
        ("clreg.learner.models:small_cnn; import os", "invalid factory"),
        ("../evil:small_cnn", "invalid factory"),
        ("no_such_module_xyz:f", "cannot import"),
        ("clreg.learner.models:no_such_fn", "no callable"),
        ("clreg.learner.models:to_tensor", "rejected its arguments"),
        ("clreg.learner.models:last_linear", "rejected its arguments"),
    ],
)
def test_build_model_rejects_bad_factories(factory: str, message: str) -> None:
    with pytest.raises(ModelFactoryError, match=message):
        build_model(factory, {}, 1, 16, 16, 10)


def test_build_model_rejects_unknown_kwargs() -> None:
    with pytest.raises(ModelFactoryError, match="rejected its arguments"):
        build_model(DEFAULT_FACTORY, {"depth": 9}, 1, 16, 16, 10)


def test_embed_returns_head_input() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)
    model.train()
    x = torch.rand(5, 1, 16, 16)
    z = embed(model, x)
    assert z.shape == (5, 64)
    assert model.training  # mode restored
    model.eval()
    head = list(model.modules())[-1]
    torch.testing.assert_close(head(z), model(x))


def test_weights_round_trip_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    a = small_cnn(1, 16, 16, 10)
    a.train()
    a(torch.rand(16, 1, 16, 16))  # non-default BatchNorm buffers must travel too
    torch.manual_seed(1)
    b = small_cnn(1, 16, 16, 10)
    load_weights(b, weights_to_bytes(a))
    a.eval(), b.eval()
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(a(x), b(x))
    assert weights_to_bytes(a) == weights_to_bytes(b)


def test_load_weights_rejects_garbage_and_mismatch() -> None:
    model = small_cnn(1, 16, 16, 10)
    with pytest.raises(WeightsError, match="not valid safetensors"):
        load_weights(model, b"\x00" * 20)
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(model, weights_to_bytes(small_cnn(1, 16, 16, 3)))


def test_to_tensor_scales_uint8_and_adds_channel() -> None:
    t = to_tensor(np.array([[[0, 255], [51, 102]]], dtype=np.uint8))
    assert t.shape == (1, 1, 2, 2) and t.dtype == torch.float32
    assert t.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])
    f = np.full((2, 3, 4, 4), 0.25, dtype=np.float32)
    assert torch.equal(to_tensor(f), torch.full((2, 3, 4, 4), 0.25))
    with pytest.raises(DataError):
        to_tensor(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(DataError):
        to_tensor(np.zeros((1, 4, 4), dtype=np.int32))


def test_pretrained_cnn_transfers_an_encoder_to_a_new_head(tmp_path: Path) -> None:
    """Encoder learnt on digits 0-4 of one site; 40 samples of digits 5-9 at another site: transfer wins."""
    sites = digits_sites(0)
    source_site, target_site = sites[0], sites[2]  # base, blur-noise
    keep = source_site.y < 5
    torch.manual_seed(0)
    source = small_cnn(1, 16, 16, 10)
    update = TrainConfig(epochs=8, bn_policy="update", fisher_samples=8, lr=1e-3, bn_lr_multiplier=30.0)
    train_site(source, source_site.x[keep], source_site.y[keep], "src", EWCState(), update)
    path = tmp_path / "encoder.safetensors"
    path.write_bytes(encoder_to_bytes(source))
    torch.manual_seed(1)
    pretrained = build_model("clreg.learner.models:pretrained_cnn", {"encoder_weights": str(path)}, 1, 16, 16, 5)
    assert torch.equal(pretrained[0][0].weight, source[0][0].weight) and pretrained[-1].out_features == 5
    sel = target_site.y >= 5
    x, y = target_site.x[sel], target_site.y[sel] - 5
    few = update.model_copy(update={"epochs": 3})
    accuracy = {}
    torch.manual_seed(1)
    for name, model in (("scratch", small_cnn(1, 16, 16, 5)), ("pretrained", pretrained)):
        train_site(model, x[:40], y[:40], "t", EWCState(), few)
        accuracy[name] = site_metrics(model, x[100:], y[100:]).accuracy
    assert accuracy["pretrained"] > accuracy["scratch"] + 0.2


def test_pretrained_cnn_refuses_a_file_that_is_not_its_encoder(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    path.write_bytes(encoder_to_bytes(small_cnn(1, 16, 16, 10, width_mult=2)))
    with pytest.raises(WeightsError, match="do not fit"):
        pretrained_cnn(1, 16, 16, 5, encoder_weights=str(path))
    with pytest.raises(WeightsError, match="cannot read"):
        pretrained_cnn(1, 16, 16, 5, encoder_weights=str(tmp_path / "missing.safetensors"))

"""Models: factory loading, embeddings, safetensors weights, input conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learner.errors import DataError, ModelFactoryError, WeightsError
from learner.models import DEFAULT_FACTORY, build_model, embed, load_weights, small_cnn, to_tensor, weights_to_bytes


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
        ("learner.models", "invalid factory"),
        ("learner.models:small_cnn; import os", "invalid factory"),
        ("../evil:small_cnn", "invalid factory"),
        ("no_such_module_xyz:f", "cannot import"),
        ("learner.models:no_such_fn", "no callable"),
        ("learner.models:to_tensor", "rejected its arguments"),
        ("learner.models:last_linear", "rejected its arguments"),
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

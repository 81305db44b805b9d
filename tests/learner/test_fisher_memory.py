"""The exact Fisher in bounded memory: any chunking gives the per-sample loop's values, chunks are sized from a
one-sample first chunk to the memory budget, and uint8 images give the float32 result exactly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from clreg.learner.fisher import fisher_diagonal, fisher_per_sample_loop
from clreg.learner.models import small_cnn


def _tiny_resnet_like() -> nn.Module:
    """Conv, BatchNorm, a residual-free stage, linear head: every hooked layer type, with bias and without."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def _with_statistics(model: nn.Module, x: Tensor) -> nn.Module:
    """Running statistics estimated from data, so eval-mode BatchNorm is not the identity."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _batch_sizes(model: nn.Module, run: object) -> list[int]:
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        run()  # type: ignore[operator]
    finally:
        hook.remove()
    return sizes


@pytest.mark.parametrize("factory", [_tiny_resnet_like, lambda: small_cnn(1, 8, 8, 5)], ids=["resnet-like", "cnn"])
@pytest.mark.parametrize("chunk", [1, 3, 10, None], ids=["1", "3", "all", "budgeted"])
def test_any_chunking_equals_the_per_sample_loop(factory: object, chunk: int | None) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 5, (10,))
    model = _with_statistics(factory(), x)  # type: ignore[operator]
    fast = fisher_diagonal(model, x, y, chunk_size=chunk)
    slow = fisher_per_sample_loop(model, x, y)
    assert set(fast) == set(slow) == {k for k, p in model.named_parameters()}
    for k in slow:
        assert torch.allclose(fast[k], slow[k], rtol=1e-5, atol=1e-7), k


def test_chunks_follow_the_budget_measured_on_one_sample() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 5, (10,))
    model = _with_statistics(_tiny_resnet_like(), x)
    # one sample captures (input + output gradient) of conv 64+256, BN 256+256, conv 256+96, BN 96+96, linear
    # 6+5 floats: 1387 x 4 bytes, 3x that at the peak = 16644 bytes a sample
    assert _batch_sizes(model, lambda: fisher_diagonal(model, x, y, memory_budget=16644 * 4)) == [1, 4, 4, 1]
    assert _batch_sizes(model, lambda: fisher_diagonal(model, x, y, memory_budget=16644 * 4 - 1)) == [1, 3, 3, 3]
    assert _batch_sizes(model, lambda: fisher_diagonal(model, x, y, memory_budget=1)) == [1] * 10
    assert _batch_sizes(model, lambda: fisher_diagonal(model, x, y)) == [1, 9]  # the default budget: 1 GiB
    assert _batch_sizes(model, lambda: fisher_diagonal(model, x, y, chunk_size=4)) == [4, 4, 2]


def test_uint8_images_give_the_float_fisher_exactly() -> None:
    torch.manual_seed(0)
    u = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 5, (6,))
    model = _with_statistics(_tiny_resnet_like(), u.float() / 255.0)
    from_uint8 = fisher_diagonal(model, u, y, chunk_size=2)
    from_float = fisher_diagonal(model, u.float() / 255.0, y, chunk_size=2)
    assert all(torch.equal(from_uint8[k], from_float[k]) for k in from_float)


def test_a_chunk_size_below_one_is_refused() -> None:
    model = small_cnn(1, 8, 8, 5)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        fisher_diagonal(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), chunk_size=0)


@pytest.mark.parametrize(
    ("c_in", "c_out", "side", "stride", "way"),
    [
        (64, 1024, 2, 1, "_conv2d_sq_paired"),  # 4 output positions, 589,824 weights
        (32, 64, 4, 1, "_conv2d_sq_unfolded"),  # 18,432 weights over 16 positions
        (2, 3, 8, 2, "_conv2d_sq_grouped"),  # 54 weights over 16 positions (strided)
    ],
)
def test_each_convolution_way_is_exact_and_the_rule_picks_it(
    c_in: int, c_out: int, side: int, stride: int, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clreg.learner import fisher

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.Flatten(),
                          nn.LazyLinear(3)).eval()
    x, y = torch.randn(5, c_in, side, side), torch.tensor([0, 1, 2, 1, 0])
    model(x)
    called: list[str] = []
    original = getattr(fisher, way)
    monkeypatch.setattr(fisher, way, lambda *a: called.append(way) or original(*a))
    got, want = fisher_diagonal(model, x, y, chunk_size=5), fisher_per_sample_loop(model, x, y)
    assert called == [way]
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6 * float(want[k].abs().max()))

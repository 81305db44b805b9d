"""EWC maths: penalty, Fisher estimators, consolidation and state bytes, on tiny models with exact numbers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from clreg.learner import fisher as fisher_module
from clreg.learner.errors import WeightsError
from clreg.learner.ewc import (
    EWCState,
    consolidate,
    fisher_diagonal,
    fisher_diagonal_vmap,
    fisher_minibatch_squared,
    fisher_per_sample_loop,
    quadratic,
    quadratic_penalty,
    state_from_bytes,
    state_to_bytes,
    trainable_params,
)
from clreg.learner.models import small_cnn


def ewc_penalty(model: nn.Module, state: EWCState) -> torch.Tensor:
    """sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (no lambda/2): the state's penalty, as training folds it."""
    return quadratic_penalty(model, quadratic(state))


def _linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    layer = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        layer.bias.copy_(torch.tensor(b))
    return layer


def test_penalty_is_zero_at_anchor_and_for_empty_state() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)
    params = trainable_params(model)
    fisher = {k: torch.rand_like(p) for k, p in params.items()}
    state = consolidate(EWCState(), "a", fisher, params)
    assert ewc_penalty(model, state).item() == 0.0
    assert ewc_penalty(model, EWCState()).item() == 0.0


def test_penalty_matches_hand_computation() -> None:
    model = _linear([[1.0, 2.0]], [0.5])
    fisher_a = {"weight": torch.tensor([[2.0, 3.0]]), "bias": torch.tensor([4.0])}
    anchor_a = {"weight": torch.tensor([[0.0, 2.0]]), "bias": torch.tensor([1.0])}
    fisher_b = {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.0])}
    anchor_b = {"weight": torch.tensor([[1.0, 0.0]]), "bias": torch.tensor([9.0])}
    state = consolidate(consolidate(EWCState(), "a", fisher_a, anchor_a), "b", fisher_b, anchor_b)
    # a: 2*(1-0)^2 + 3*(2-2)^2 + 4*(0.5-1)^2 = 3;  b: 1*(1-1)^2 + 1*(2-0)^2 + 0 = 4
    assert ewc_penalty(model, state).item() == pytest.approx(7.0, abs=1e-6)


def test_the_folded_quadratic_is_the_sum_of_every_entry_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)
    params = trainable_params(model)
    state = EWCState()
    for site in ("a", "b", "c"):
        state = consolidate(state, site, {k: torch.rand_like(p) for k, p in params.items()},
                            {k: p + 0.1 * torch.randn_like(p) for k, p in params.items()})
    state.entries["a"].fisher["0.0.weight"].zero_()  # a parameter no entry cares about in part
    separate = sum((e.fisher[k] * (dict(model.named_parameters())[k] - e.anchor[k]).pow(2)).sum()
                   for e in state.entries.values() for k in e.fisher)
    (g_separate,) = torch.autograd.grad(separate, [model.get_parameter("0.0.weight")])
    folded = quadratic_penalty(model, quadratic(state))
    (g_folded,) = torch.autograd.grad(folded, [model.get_parameter("0.0.weight")])
    assert folded.item() == pytest.approx(separate.item(), rel=1e-5)
    torch.testing.assert_close(g_folded, g_separate, rtol=1e-4, atol=1e-6)
    assert len(quadratic(state).fisher) == len(params)  # one tensor per parameter, whatever the number of sites


def test_penalty_gradient_is_two_f_delta() -> None:
    model = _linear([[1.0, 2.0]], [0.5])
    fisher = {"weight": torch.tensor([[2.0, 3.0]]), "bias": torch.tensor([4.0])}
    anchor = {"weight": torch.tensor([[0.0, 2.0]]), "bias": torch.tensor([1.0])}
    ewc_penalty(model, consolidate(EWCState(), "a", fisher, anchor)).backward()
    assert model.weight.grad.tolist() == [[4.0, 0.0]]
    assert model.bias.grad.tolist() == [-4.0]


def test_fisher_of_linear_softmax_matches_closed_form() -> None:
    # For logits = W x + b, d log p_y / dW = (onehot(y) - p) x^T.
    model = _linear([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]], [0.2, -0.3])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0], [-1.0, 1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    r = torch.nn.functional.one_hot(y, 2).float() - torch.softmax(model(x), dim=-1).detach()
    expected_w = (r[:, :, None] * x[:, None, :]).pow(2).mean(0)
    fisher = fisher_diagonal(model, x, y, chunk_size=2)
    torch.testing.assert_close(fisher["weight"], expected_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fisher["bias"], r.pow(2).mean(0), rtol=1e-6, atol=1e-7)


def _assert_equals_loop(model: nn.Module, fast: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    slow = fisher_per_sample_loop(model, x, y)
    assert fast.keys() == slow.keys() == {k for k, p in model.named_parameters() if p.requires_grad}
    for k in slow:
        assert (fast[k] - slow[k]).abs().max() <= 1e-4 * slow[k].abs().max(), k


@pytest.mark.parametrize("estimator", [fisher_diagonal, fisher_diagonal_vmap], ids=["hooks", "vmap"])
def test_vectorised_fisher_equals_per_sample_loop_on_cnn(estimator: Callable[..., dict[str, torch.Tensor]]) -> None:
    torch.manual_seed(1)
    model = small_cnn(1, 16, 16, 10)
    model.train()
    model(torch.rand(32, 1, 16, 16))  # give BatchNorm non-trivial running statistics
    x, y = torch.rand(40, 1, 16, 16), torch.randint(0, 10, (40,))
    fast = estimator(model, x, y, chunk_size=16)
    assert model.training  # train mode restored
    assert all(p.grad is None for p in model.parameters())  # no side effect on .grad
    _assert_equals_loop(model, fast, x, y)


def test_hooked_fisher_needs_no_vmap_on_the_small_cnn(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> None:
        raise AssertionError("vmap fallback used")

    monkeypatch.setattr(fisher_module, "_vmap_squared_sums", fail)
    fisher_diagonal(small_cnn(1, 16, 16, 10), torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,)))


class _Unusual(nn.Module):
    """Layers the hooks handle in less common forms, and parameters they must leave to the vmap fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 4, stride=2, padding=1)  # hooked: strided
        self.relu = nn.ReLU(inplace=True)  # overwrites the hooked conv's and BatchNorm's outputs
        self.norm = nn.LayerNorm([4, 8, 8])  # fallback: unsupported type
        self.bn = nn.BatchNorm2d(4)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2, padding=2, dilation=2)  # hooked: grouped, dilated
        self.reflect = nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect")  # fallback: padding
        self.rows = nn.Linear(8, 6)  # hooked: 4-d input; its weight is also used outside its forward
        self.head = nn.Linear(4 * 8 * 6, 10)
        self.scale = nn.Parameter(torch.ones(1))  # fallback: a bare parameter
        self.frozen = nn.Linear(10, 10)
        self.frozen.weight.requires_grad_(False)
        self.twice = nn.Linear(10, 10)  # fallback: one module called twice per forward
        self.bn_flat = nn.BatchNorm1d(10)  # hooked: [N, C] input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.norm(self.relu(self.conv(x)))))
        h = self.rows(self.reflect(self.grouped(h))) + 0.1 * self.rows.weight.sum()
        return self.twice(self.twice(self.bn_flat(self.frozen(self.head(h.flatten(1)) * self.scale))))


def test_hooked_fisher_falls_back_to_vmap_where_hooks_are_not_exact() -> None:
    torch.manual_seed(3)
    model = _Unusual()
    model.train()
    model(torch.rand(16, 1, 16, 16))
    x, y = torch.rand(24, 1, 16, 16), torch.randint(0, 10, (24,))
    _assert_equals_loop(model, fisher_diagonal(model, x, y, chunk_size=10), x, y)


def test_hooked_fisher_uses_vmap_when_batch_norm_mixes_samples() -> None:
    torch.manual_seed(4)  # without running statistics BatchNorm normalises by the batch even in eval mode
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4))
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 4, (12,))
    _assert_equals_loop(model, fisher_diagonal(model, x, y), x, y)


def test_fisher_max_samples_takes_evenly_spaced_subset() -> None:
    model = _linear([[0.1, -0.2], [0.3, 0.4]], [0.0, 0.1])
    x, y = torch.randn(10, 2), torch.tensor([0, 1] * 5)
    sub = fisher_diagonal(model, x, y, max_samples=5)
    ref = fisher_per_sample_loop(model, x[[0, 2, 4, 6, 8]], y[[0, 2, 4, 6, 8]])
    torch.testing.assert_close(sub["weight"], ref["weight"])


def test_minibatch_squared_with_batch_one_is_the_empirical_fisher_and_smaller_otherwise() -> None:
    torch.manual_seed(2)
    model = _linear([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]], [0.2, -0.3])
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    exact = fisher_per_sample_loop(model, x, y)
    torch.testing.assert_close(fisher_minibatch_squared(model, x, y, batch_size=1)["weight"], exact["weight"])
    assert fisher_minibatch_squared(model, x, y, batch_size=32)["weight"].sum() < exact["weight"].sum()


def test_consolidate_separate_sets_and_replaces_entries() -> None:
    f1, a1 = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.0, 0.0])}
    f2, a2 = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([1.0, 1.0])}
    s = consolidate(consolidate(EWCState(), "a", f1, a1), "b", f2, a2)
    assert list(s.entries) == ["a", "b"] and s.sites == ["a", "b"]
    s2 = consolidate(s, "a", f2, a2)
    assert s2.entries["a"].fisher["w"].tolist() == [3.0, 4.0]
    assert s2.sites == ["b", "a"]
    assert s.entries["a"].fisher["w"].tolist() == [1.0, 2.0]  # the old state is untouched


def test_consolidate_online_accumulates_with_gamma() -> None:
    state = EWCState(mode="online", gamma=0.5)
    state = consolidate(state, "a", {"w": torch.tensor([2.0, 4.0])}, {"w": torch.tensor([1.0, 1.0])})
    state = consolidate(state, "b", {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([5.0, 6.0])})
    assert list(state.entries) == ["online"] and state.sites == ["a", "b"]
    assert state.entries["online"].fisher["w"].tolist() == [2.0, 2.0]
    assert state.entries["online"].anchor["w"].tolist() == [5.0, 6.0]


def test_state_bytes_round_trip_exactly() -> None:
    state = EWCState(mode="online", gamma=0.9)
    state = consolidate(state, "x-ray.1", {"a.weight": torch.rand(3, 2)}, {"a.weight": torch.rand(3, 2)})
    back = state_from_bytes(state_to_bytes(state))
    assert (back.mode, back.gamma, back.sites, list(back.entries)) == ("online", 0.9, ["x-ray.1"], ["online"])
    assert torch.equal(back.entries["online"].fisher["a.weight"], state.entries["online"].fisher["a.weight"])
    assert torch.equal(back.entries["online"].anchor["a.weight"], state.entries["online"].anchor["a.weight"])


def test_state_bytes_are_deterministic() -> None:
    f, a = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([2.0, 3.0])}
    state = consolidate(consolidate(EWCState(), "a", f, a), "b", f, a)
    assert len({state_to_bytes(state) for _ in range(10)}) == 1


def test_empty_state_round_trips() -> None:
    back = state_from_bytes(state_to_bytes(EWCState(mode="separate", gamma=1.0)))
    assert (back.mode, back.gamma, back.entries, back.sites) == ("separate", 1.0, {}, [])


def test_separate_state_with_entries_round_trips() -> None:
    f, a = {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}
    state = consolidate(consolidate(EWCState(), "s1", f, a), "s0", f, a)
    back = state_from_bytes(state_to_bytes(state))
    assert list(back.entries) == ["s1", "s0"]
    assert back.entries["s0"].anchor["w"].tolist() == [2.0]


def test_bad_state_bytes_raise_weights_error() -> None:
    with pytest.raises(WeightsError):
        state_from_bytes(b"not safetensors at all")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown EWC mode"):
        EWCState(mode="both")  # type: ignore[arg-type]

"""Per-site BatchNorm: the bank's bytes, extract/apply, MAP routing, and training under bn_policy "per_site"."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from clreg.learner.errors import WeightsError
from clreg.learner.evaluate import site_metrics
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import small_cnn
from clreg.learner.sitebn import (
    apply_site_bn,
    bank_from_bytes,
    bank_to_bytes,
    bn_param_names,
    extract_site_bn,
    first_bn_input,
    route,
    route_scores,
    site_model,
)
from clreg.learner.streams import digits_sites
from clreg.learner.train import TrainConfig, train_site

PER_SITE = TrainConfig(epochs=1, batch_size=32, fisher_samples=16, bn_policy="per_site", ewc_lambda=1e3)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return small_cnn(1, 16, 16, 10)


def _warm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm layer distinct statistics and affine values."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean, m.running_var):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(seed + 3)
    return model


def test_extract_apply_is_exact_and_touches_only_batchnorm() -> None:
    source, target = _warm(_model(0), 1), _model(1)
    conv_before = target[0][0].weight.detach().clone()
    apply_site_bn(target, extract_site_bn(source))
    assert all(torch.equal(a, b) for a, b in zip(extract_site_bn(target).values(),
                                                 extract_site_bn(source).values(), strict=True))
    assert set(extract_site_bn(source)) == {f"{layer}.{k}" for layer in ("0.1", "1.1") for k in
                                            ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert torch.equal(target[0][0].weight, conv_before)
    assert bn_param_names(target) == {"0.1.weight", "0.1.bias", "1.1.weight", "1.1.bias"}


def test_apply_refuses_a_state_of_another_model() -> None:
    other = extract_site_bn(small_cnn(1, 16, 16, 10, width_mult=2))
    with pytest.raises(WeightsError, match="shape"):
        apply_site_bn(_model(), other)
    partial = dict(extract_site_bn(_model()))
    partial.pop("0.1.bias")
    with pytest.raises(WeightsError, match=r"missing \['0.1.bias'\]"):
        apply_site_bn(_model(), partial)


def test_bank_round_trip_is_exact_and_deterministic() -> None:
    bank = {"b": extract_site_bn(_warm(_model(), 2)), "a": extract_site_bn(_warm(_model(), 5))}
    data = bank_to_bytes(bank)
    back = bank_from_bytes(data)
    assert sorted(back) == ["a", "b"] and bank_to_bytes(back) == data
    assert all(torch.equal(back[s][k], bank[s][k]) for s in bank for k in bank[s])
    with pytest.raises(WeightsError, match="not valid safetensors"):
        bank_from_bytes(b"junk")


def test_site_model_and_site_metrics_use_the_site_entry_and_leave_the_model_alone() -> None:
    model, bank = _model(), {"a": extract_site_bn(_warm(_model(), 7))}
    before = extract_site_bn(model)
    x = np.random.default_rng(0).random((20, 1, 16, 16), dtype=np.float32)
    y = np.arange(20) % 10
    copied = site_model(model, bank, "a")
    assert np.array_equal(site_metrics(model, x, y, site_bn=bank["a"]).correct, site_metrics(copied, x, y).correct)
    assert all(torch.equal(before[k], v) for k, v in extract_site_bn(model).items())
    with pytest.raises(WeightsError, match="no BatchNorm entry"):
        site_model(model, bank, "zz")


TRAIN = 150  # samples per site used for training; the rest are held out for routing


@pytest.fixture(scope="module")
def digits_run() -> tuple[nn.Module, list[bytes], list]:
    """per_site training over four digits sites in order: the model, the bank after each site, the sites."""
    sites = digits_sites(0, ("base", "contrast", "blur-noise", "inverted"))
    model, ewc, bank, banks = _model(), EWCState(), None, []
    for s in sites:
        result = train_site(model, s.x[:TRAIN], s.y[:TRAIN], s.name, ewc, PER_SITE, bn_bank=bank)
        ewc, bank = state_from_bytes(result.ewc_state), result.bn_bank
        banks.append(bank)
    return model, banks, sites


def test_per_site_training_adds_one_entry_and_leaves_the_others_untouched(digits_run: tuple) -> None:
    model, banks, sites = digits_run
    decoded = [bank_from_bytes(b) for b in banks]
    names = [s.name for s in sites]
    assert [sorted(b) for b in decoded] == [sorted(names[: i + 1]) for i in range(len(names))]
    for earlier, later in zip(decoded, decoded[1:], strict=False):
        assert all(torch.equal(earlier[s][k], later[s][k]) for s in earlier for k in earlier[s])
    assert all(torch.equal(v, decoded[-1]["inverted"][k]) for k, v in extract_site_bn(model).items())
    again = train_site(copy.deepcopy(model), sites[0].x[:64], sites[0].y[:64], "base", EWCState(), PER_SITE,
                       bn_bank=banks[-1])
    bank = bank_from_bytes(again.bn_bank)
    assert all(torch.equal(decoded[-1][s][k], bank[s][k]) for s in names[1:] for k in bank[s])
    assert not torch.equal(decoded[-1]["base"]["0.1.weight"], bank["base"]["0.1.weight"])
    fisher = state_from_bytes(again.ewc_state).entries["base"].fisher
    assert not set(fisher) & bn_param_names(model) and "0.0.weight" in fisher  # BatchNorm is never penalised


def test_map_routing_picks_each_digits_site(digits_run: tuple) -> None:
    model, banks, sites = digits_run
    bank = bank_from_bytes(banks[-1])
    for s in sites:
        for start in range(TRAIN, len(s.y) - 31, 32):  # held-out 32-sample chunks the training never saw
            assert route(model, bank, torch.from_numpy(s.x[start : start + 32])) == s.name


def test_routing_stops_at_the_first_batchnorm_and_scores_as_the_direct_sum() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10).eval()
    ran_past: list[bool] = []
    last = list(model.modules())[-1]
    hook = last.register_forward_hook(lambda *_: ran_past.append(True))
    x = torch.rand(3, 1, 16, 16)
    act = first_bn_input(model, x).double()
    hook.remove()
    assert ran_past == [] and act.shape[0] == 3  # the layers after the first BatchNorm never ran
    bank = {"a": extract_site_bn(model)}
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.add_(0.3)
            m.running_var.mul_(2.0)
    bank["b"] = extract_site_bn(other)
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    flat = act.transpose(0, 1).reshape(act.shape[1], -1)
    for site, bn in bank.items():
        mean = bn[f"{first}.running_mean"].double()[:, None]
        var = bn[f"{first}.running_var"].double()[:, None] + 1e-5
        direct = -0.5 * ((flat - mean) ** 2 / var + var.log() + np.log(2 * np.pi)).sum() / 3
        assert route_scores(model, bank, x)[site] == pytest.approx(float(direct), rel=1e-9)

"""train_site: determinism, BatchNorm policy, EWC consolidation, curves and input checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from clreg.learner.errors import DataError, WeightsError
from clreg.learner.ewc import EWCState, quadratic, quadratic_penalty, state_from_bytes
from clreg.learner.models import load_weights, small_cnn, weights_to_bytes
from clreg.learner.train import TrainConfig, train_site

FAST = TrainConfig(epochs=2, batch_size=16, fisher_samples=32)


def _data(seed: int, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 16, 16), dtype=np.float32), rng.integers(0, 10, n)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return small_cnn(1, 16, 16, 10)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_same_seed_gives_identical_weights_and_state() -> None:
    x, y = _data(0)
    base = _model()
    r1 = train_site(copy.deepcopy(base), x, y, "a", EWCState(), FAST)
    r2 = train_site(copy.deepcopy(base), x, y, "a", EWCState(), FAST)
    assert r1.weights == r2.weights and r1.ewc_state == r2.ewc_state
    assert [row["loss"] for row in r1.curve] == [row["loss"] for row in r2.curve]
    r3 = train_site(copy.deepcopy(base), x, y, "a", EWCState(), FAST.model_copy(update={"seed": 1}))
    assert r3.weights != r1.weights


def test_result_curve_state_and_device() -> None:
    x, y = _data(0)
    rows: list[dict] = []
    result = train_site(_model(), x, y, "a", EWCState(), FAST, progress=rows.append)
    assert [r["epoch"] for r in result.curve] == [1.0, 2.0] and rows == result.curve
    assert all(r["penalty"] == 0.0 and r["loss"] == r["ce"] for r in result.curve)
    assert result.device == "cpu" and result.seconds > 0
    state = state_from_bytes(result.ewc_state)
    assert state.sites == ["a"] and list(state.entries) == ["a"]
    model = _model(5)
    load_weights(model, result.weights)
    assert quadratic_penalty(model, quadratic(state)).item() == 0.0  # anchored at the returned weights


def test_second_site_is_penalised_and_consolidated_separately() -> None:
    model = _model()
    first = train_site(model, *_data(0), "a", EWCState(), FAST)
    second = train_site(model, *_data(1), "b", state_from_bytes(first.ewc_state), FAST)
    assert second.curve[-1]["penalty"] > 0
    last = second.curve[-1]
    assert last["loss"] == pytest.approx(last["ce"] + FAST.ewc_lambda / 2 * last["penalty"], rel=1e-6)
    assert list(state_from_bytes(second.ewc_state).entries) == ["a", "b"]


def test_a_site_learnt_again_keeps_its_fisher_re_anchored_unless_asked_to_refresh_it() -> None:
    model = _model()
    first = train_site(model, *_data(0), "a", EWCState(), FAST)
    load_weights(model, first.weights)
    before = state_from_bytes(first.ewc_state).entries["a"]
    again = train_site(copy.deepcopy(model), *_data(1), "a", state_from_bytes(first.ewc_state), FAST)
    kept = state_from_bytes(again.ewc_state).entries["a"]
    assert kept.fisher.keys() == before.fisher.keys() and all(
        torch.equal(kept.fisher[k], before.fisher[k]) for k in before.fisher)  # not estimated again
    trained = _model(5)
    load_weights(trained, again.weights)
    params = dict(trained.named_parameters())
    assert kept.anchor and all(torch.equal(v, params[k].detach()) for k, v in kept.anchor.items())  # the new weights
    assert not all(torch.equal(kept.anchor[k], before.anchor[k]) for k in before.anchor)
    refreshed = train_site(copy.deepcopy(model), *_data(1), "a", state_from_bytes(first.ewc_state),
                           FAST.model_copy(update={"refresh_fisher": True}))
    fresh = state_from_bytes(refreshed.ewc_state).entries["a"]
    assert not all(torch.equal(fresh.fisher[k], before.fisher[k]) for k in before.fisher)
    assert again.fisher_seconds < refreshed.fisher_seconds


def test_online_mode_keeps_one_entry() -> None:
    cfg = FAST.model_copy(update={"ewc_mode": "online", "ewc_gamma": 0.5})
    model = _model()
    first = train_site(model, *_data(0), "a", EWCState(mode="online"), cfg)
    second = train_site(model, *_data(1), "b", state_from_bytes(first.ewc_state), cfg)
    state = state_from_bytes(second.ewc_state)
    assert (list(state.entries), state.sites, state.gamma) == (["online"], ["a", "b"], 0.5)


def test_bn_freeze_leaves_running_stats_untouched_but_trains_affine() -> None:
    model = _model()
    train_site(model, *_data(0), "a", EWCState(), FAST.model_copy(update={"bn_policy": "update"}))
    before = _bn_buffers(model)
    gamma_before = model[0][1].weight.detach().clone()
    train_site(model, *_data(1), "b", EWCState(), FAST.model_copy(update={"bn_policy": "freeze"}))
    after = _bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(gamma_before, model[0][1].weight)


def test_bn_update_changes_running_stats() -> None:
    model = _model()
    train_site(model, *_data(0), "a", EWCState(), FAST.model_copy(update={"bn_policy": "update"}))
    before = _bn_buffers(model)
    train_site(model, *_data(1), "b", EWCState(), FAST.model_copy(update={"bn_policy": "update"}))
    assert not torch.equal(before["0.1.running_mean"], model.state_dict()["0.1.running_mean"])
    assert int(model.state_dict()["0.1.num_batches_tracked"]) == 12  # 2 sites x 2 epochs x 3 batches


def test_bn_freeze_on_fresh_model_still_estimates_statistics() -> None:
    model = _model()
    train_site(model, *_data(0), "a", EWCState(), FAST.model_copy(update={"bn_policy": "freeze"}))
    assert int(model.state_dict()["0.1.num_batches_tracked"]) == 6


def test_class_weighted_and_head_lr_change_the_result() -> None:
    x, y = _data(0)
    plain = train_site(_model(), x, y, "a", EWCState(), FAST)
    weighted = train_site(_model(), x, y, "a", EWCState(), FAST.model_copy(update={"class_weighted": True}))
    head = train_site(_model(), x, y, "a", EWCState(), FAST.model_copy(update={"head_lr_multiplier": 10.0}))
    assert len({plain.weights, weighted.weights, head.weights}) == 3


def test_bad_inputs_are_refused() -> None:
    x, y = _data(0)
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        train_site(_model(), x, np.full(len(y), 10), "a", EWCState(), FAST)
    with pytest.raises(DataError):
        train_site(_model(), x, y[:-1], "a", EWCState(), FAST)


def test_state_of_another_model_or_mode_is_refused() -> None:
    other = train_site(small_cnn(1, 16, 16, 3), *_data(0)[:1], np.zeros(48, dtype=np.int64), "a", EWCState(), FAST)
    with pytest.raises(WeightsError, match="lacks or shapes differently"):
        train_site(_model(), *_data(1), "b", state_from_bytes(other.ewc_state), FAST)
    first = train_site(_model(), *_data(0), "a", EWCState(), FAST)
    with pytest.raises(WeightsError, match="mode"):
        online = FAST.model_copy(update={"ewc_mode": "online"})
        train_site(_model(), *_data(1), "b", state_from_bytes(first.ewc_state), online)


def test_weights_bytes_match_the_trained_model() -> None:
    model = _model()
    result = train_site(model, *_data(0), "a", EWCState(), FAST)
    assert result.weights == weights_to_bytes(model)


def test_early_stopping_keeps_the_best_validation_epoch() -> None:
    x, y = _data(0, n=80)
    cfg = FAST.model_copy(update={"epochs": 12, "val_fraction": 0.25, "patience": 2, "lr": 0.05})
    model = _model()
    result = train_site(model, x, y, "a", EWCState(), cfg)
    val = [row["val_loss"] for row in result.curve]
    best = int(np.argmin(val)) + 1
    assert result.best_epoch == best and len(result.curve) == min(cfg.epochs, best + cfg.patience)
    assert len(result.curve) < cfg.epochs  # random labels: validation loss rises, so it stops early
    held = train_site(_model(), x, y, "a", EWCState(), cfg.model_copy(update={"epochs": best, "val_fraction": 0.25,
                                                                            "patience": 50}))
    assert result.weights == held.weights  # the kept weights are those of the best epoch


def test_no_validation_split_means_no_early_stopping() -> None:
    result = train_site(_model(), *_data(0), "a", EWCState(), FAST.model_copy(update={"bn_policy": "update"}))
    assert result.best_epoch is None and "val_loss" not in result.curve[-1] and result.bn_bank is None

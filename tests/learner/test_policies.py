"""Transfer-learning policies: encoder blocks, frozen blocks, head-only warm-up, shared frozen BatchNorm, and
mixed precision (a no-op on the CPU)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from clreg.learner import optim
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import small_cnn
from clreg.learner.train import TrainConfig, train_site
from clreg.learner.zoo import densenet121, resnet18

FAST = TrainConfig(epochs=2, batch_size=16, fisher_samples=32, bn_policy="update")


class TinyResNet(nn.Module):
    """torchvision's ResNet layout in miniature: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        stage = lambda c_in, c_out: nn.Sequential(  # noqa: E731
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        self.layer1, self.layer2, self.layer3, self.layer4 = stage(4, 4), stage(4, 8), stage(8, 8), stage(8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _data(seed: int, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 16, 16), dtype=np.float32), rng.integers(0, 10, n)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trained_first(model: nn.Module) -> nn.Module:
    """A model whose BatchNorm layers have statistics (one site of plain training)."""
    train_site(model, *_data(0), "a", EWCState(), FAST)
    return model


def test_blocks_are_top_level_children_or_densenet_features() -> None:
    assert [n for n, _ in optim.encoder_blocks(TinyResNet())] == ["conv1", "bn1", "layer1", "layer2", "layer3",
                                                                   "layer4"]
    assert [n for n, _ in optim.encoder_blocks(resnet18(3, 64, 64, 5))] == ["conv1", "bn1", "layer1", "layer2",
                                                                            "layer3", "layer4"]
    assert [n for n, _ in optim.encoder_blocks(densenet121(3, 64, 64, 5))] == [
        "features.conv0", "features.norm0", "features.denseblock1", "features.transition1", "features.denseblock2",
        "features.transition2", "features.denseblock3", "features.transition3", "features.denseblock4",
        "features.norm5"]
    # the small CNN: two conv blocks, then the embedding layer; the head's child is not a block
    assert [n for n, _ in optim.encoder_blocks(small_cnn(1, 16, 16, 10))] == ["0", "1", "4"]


def test_frozen_blocks_stay_bit_for_bit_and_leave_the_fisher() -> None:
    torch.manual_seed(0)
    model = _trained_first(TinyResNet())
    before = _state(model)
    cfg = FAST.model_copy(update={"freeze_blocks": 3, "lr": 0.05})  # conv1, bn1, layer1
    result = train_site(model, *_data(1), "b", EWCState(), cfg)
    after = _state(model)
    frozen = [k for k in before if k.split(".")[0] in ("conv1", "bn1", "layer1")]
    assert len(frozen) == 1 + 5 + 6  # conv1.weight; bn1's 5 tensors; layer1's conv weight and 5 BatchNorm tensors
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # weights and running statistics alike
    moved = [k for k in before if k.endswith("weight") and k not in frozen]
    assert moved and all(not torch.equal(before[k], after[k]) for k in moved)
    assert all(p.requires_grad for p in model.parameters())  # frozen only for the update
    fisher = state_from_bytes(result.ewc_state).entries["b"].fisher
    assert not any(k in fisher for k in frozen) and "layer2.0.weight" in fisher and "fc.weight" in fisher


def test_frozen_blocks_keep_their_online_importance() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)
    online = FAST.model_copy(update={"ewc_mode": "online", "ewc_gamma": 0.5})
    first = state_from_bytes(train_site(model, *_data(0), "a", EWCState(mode="online"), online).ewc_state)
    second = train_site(model, *_data(1), "b", first, online.model_copy(update={"freeze_blocks": 1}))
    old, new = first.entries["online"], state_from_bytes(second.ewc_state).entries["online"]
    assert set(new.fisher) == set(old.fisher)
    assert torch.equal(new.fisher["0.0.weight"], 0.5 * old.fisher["0.0.weight"])  # this site adds nothing
    assert torch.equal(new.anchor["0.0.weight"], old.anchor["0.0.weight"])  # it did not move


def test_warm_up_trains_only_the_head_for_exactly_its_steps() -> None:
    torch.manual_seed(0)
    model = _trained_first(small_cnn(1, 16, 16, 10))
    before = _state(model)
    steps: list[int] = []
    snapshots: dict[int, tuple[int, dict[str, Tensor]]] = {}
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(1))

    def seen(row: dict) -> None:
        snapshots.setdefault(int(row["epoch"]), (len(steps), _state(model)))

    try:  # 48 samples in minibatches of 16: 3 steps a pass, so 5 warm-up steps take two passes
        result = train_site(model, *_data(1), "b", EWCState(), FAST.model_copy(update={"warmup_steps": 5,
                                                                                       "epochs": 1}), progress=seen)
    finally:
        hook.remove()
    count, warm = snapshots[0]
    assert count == 5 and len(steps) == 5 + 3 and [r["epoch"] for r in result.curve] == [0, 1]
    changed = {k for k in before if not torch.equal(before[k], warm[k])}
    assert changed == {"6.weight", "6.bias"}  # the head alone: no other weight, no BatchNorm statistic
    assert not torch.equal(before["0.0.weight"], snapshots[1][1]["0.0.weight"])  # then full fine-tuning


def test_shared_frozen_keeps_statistics_and_tunes_scale_and_shift() -> None:
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)  # fresh: "freeze" would estimate these statistics, shared_frozen keeps them
    before = _state(model)
    train_site(model, *_data(1), "b", EWCState(), FAST.model_copy(update={"bn_policy": "shared_frozen"}))
    after = _state(model)
    for layer in ("0.1", "1.1"):
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(before[f"{layer}.{buffer}"], after[f"{layer}.{buffer}"])
        for param in ("weight", "bias"):
            assert not torch.equal(before[f"{layer}.{param}"], after[f"{layer}.{param}"])
    fresh = small_cnn(1, 16, 16, 10)
    train_site(fresh, *_data(1), "b", EWCState(), FAST.model_copy(update={"bn_policy": "freeze"}))
    assert not torch.equal(fresh.state_dict()["0.1.running_mean"], before["0.1.running_mean"])


def test_mixed_precision_changes_nothing_on_the_cpu() -> None:
    assert optim.precision(torch.device("cpu"), True).dtype is None
    torch.manual_seed(0)
    base = small_cnn(1, 16, 16, 10)
    on = train_site(copy.deepcopy(base), *_data(0), "a", EWCState(), FAST.model_copy(update={"mixed_precision": True}))
    off = train_site(copy.deepcopy(base), *_data(0), "a", EWCState(),
                     FAST.model_copy(update={"mixed_precision": False}))
    assert on.weights == off.weights and on.ewc_state == off.ewc_state


def test_policies_are_recorded_settings() -> None:
    cfg = TrainConfig(warmup_steps=10, freeze_blocks=2, bn_policy="shared_frozen", mixed_precision=False,
                      fisher_chunk=8)
    dumped = cfg.model_dump()
    assert {k: dumped[k] for k in ("warmup_steps", "freeze_blocks", "bn_policy", "mixed_precision",
                                   "fisher_chunk", "fisher_memory_mb")} == {
        "warmup_steps": 10, "freeze_blocks": 2, "bn_policy": "shared_frozen", "mixed_precision": False,
        "fisher_chunk": 8, "fisher_memory_mb": None}
    assert TrainConfig.model_validate(dumped) == cfg

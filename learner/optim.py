"""The transfer-learning policy of one update: which parameters train, at which learning rate, in which phase,
which BatchNorm statistics move, and in which precision the forward pass runs.

Three learning rates (Adam parameter groups): `lr` for the encoder's weights, `lr * head_lr_multiplier` for
the head (the last nn.Linear), `lr * bn_lr_multiplier` for every BatchNorm scale/shift.
Blocks: the encoder's top-level children that own parameters, in order, the child holding the head left out;
for a torchvision-layout DenseNet (a `features` child: conv0, norm0, denseblock1, transition1, ..., norm5) the
children of `features`. Freezing the first N blocks sets their parameters' requires_grad False for the whole
update (the optimizer, the EWC penalty's gradient and the Fisher skip them) and keeps their BatchNorm layers
in eval mode, so their running statistics stay as they were.
Warm-up: steps on the head alone, every other parameter frozen and every BatchNorm layer in eval mode.
Mixed precision: autocast (bfloat16 where the GPU has it, else float16 with a GradScaler) on CUDA in the
training forward only; on the CPU, and for the Fisher, everything stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clreg.learner.models import last_linear
from clreg.learner.sitebn import BN


def encoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The encoder's blocks in forward-definition order, by module name (see the module docstring)."""
    features = getattr(model, "features", None)
    parent, prefix = (features, "features.") if isinstance(features, nn.Module) else (model, "")
    head = last_linear(model)
    return [(prefix + name, child) for name, child in parent.named_children()
            if any(True for _ in child.parameters()) and not any(m is head for m in child.modules())]


def frozen_parameters(model: nn.Module, blocks: int) -> list[nn.Parameter]:
    """The parameters of the first `blocks` encoder blocks (all of them when there are fewer)."""
    return [p for _, block in encoder_blocks(model)[:blocks] for p in block.parameters()]


def frozen_norms(model: nn.Module, blocks: int) -> list[BN]:
    """The BatchNorm layers inside the first `blocks` encoder blocks."""
    return [m for _, block in encoder_blocks(model)[:blocks] for m in block.modules() if isinstance(m, BN)]


@contextlib.contextmanager
def requires_grad_off(params: list[nn.Parameter]) -> Iterator[None]:
    """The parameters frozen for the block (requires_grad False); each one's own setting restored after."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def all_but_head(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except the head's: what a warm-up freezes."""
    head = {id(p) for p in last_linear(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def still_norms(model: nn.Module, bn_policy: str, blocks: int) -> list[BN]:
    """BatchNorm layers whose running statistics stay fixed during training (eval mode), decided once before it.

    "shared_frozen": every layer that tracks statistics, as the weights carry them (a pretrained encoder's, even
    where its checkpoint has no batch counter). "freeze": only layers whose statistics were estimated from data
    (num_batches_tracked > 0); a layer that has seen no batch still estimates them, since freezing the initial
    mean 0 / variance 1 would keep no knowledge. Both tune scale/shift. Under any policy: the frozen blocks' layers.
    """
    norms = [m for m in model.modules() if isinstance(m, BN) and m.track_running_stats]
    if bn_policy == "shared_frozen":
        chosen = norms
    elif bn_policy == "freeze":
        chosen = [m for m in norms if m.num_batches_tracked is not None and int(m.num_batches_tracked) > 0]
    else:
        chosen = []
    ids = {id(m) for m in chosen}
    return chosen + [m for m in frozen_norms(model, blocks) if id(m) not in ids]


def set_train_mode(model: nn.Module, still: list[BN]) -> None:
    """Train mode, except the still BatchNorm layers: eval mode normalises with, and keeps, their statistics."""
    model.train()
    for m in still:
        m.eval()


def optimizer(model: nn.Module, lr: float, head_lr_multiplier: float, bn_lr_multiplier: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with the three learning rates: encoder, head, BatchNorm scale/shift."""
    head_ids = {id(p) for p in last_linear(model).parameters()}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, BN) for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for p in trainable if id(p) in head_ids]
    norm = [p for p in trainable if id(p) in norm_ids]
    body = [p for p in trainable if id(p) not in head_ids | norm_ids]
    return torch.optim.Adam([
        {"params": body, "lr": lr},
        {"params": head, "lr": lr * head_lr_multiplier},
        {"params": norm, "lr": lr * bn_lr_multiplier},
    ])


@dataclass
class Precision:
    """The training forward's precision: autocast to `dtype` (None: float32) and the matching gradient scaler."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The forward pass's autocast context; a no-op at float32."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, opt: torch.optim.Optimizer, loss: Tensor) -> None:
        """Backward and optimizer step; float16 scales the loss so small gradients do not underflow."""
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(opt)
        self.scaler.update()


def precision(device: torch.device, mixed: bool) -> Precision:
    """bfloat16 autocast on a CUDA device that has it, else float16 with loss scaling; float32 on the CPU."""
    if not mixed or device.type != "cuda":
        return Precision(device.type, None, torch.amp.GradScaler(device.type, enabled=False))
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision("cuda", dtype, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16))

"""Uploaded checkpoints: read a safetensors or torch `.pth` file into a state dict, and adapt it to a network.

An ImageNet checkpoint (torchvision's resnet18/50, densenet121) becomes a model's initial weights: its RGB
stem filters are summed for a one-channel network, its 1000-class head is replaced by the network's fresh
head, and every other tensor must match the network by name and shape. A `.pth` is read with
`torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import Tensor, nn

from clreg.learner.errors import WeightsError
from clreg.learner.models import MeanStd, last_linear, weights_to_bytes

NESTED = ("state_dict", "model")  # where training scripts keep the state dict inside a checkpoint
# torchvision's DenseNet checkpoints name `denselayer1.norm.1.weight` what the module calls `norm1.weight`
# (torchvision.models.densenet._load_state_dict applies the same rewrite).
LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
SHOWN = 8  # keys named in an error, per kind
# The normalisation ImageNet checkpoints were trained under; grey: the mean of the RGB means and stds.
IMAGENET: dict[int, MeanStd] = {1: ((0.449,), (0.226,)), 3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
# What torch.load raises on bytes that are not a checkpoint or hold objects weights_only refuses.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError,
               ImportError, IndexError, OSError, zipfile.BadZipFile)


def load_checkpoint(data: bytes) -> dict[str, Tensor]:
    """The state dict in checkpoint bytes: safetensors, or a torch `.pth` (plain, or nested under "state_dict"
    or "model"), with a DataParallel "module." prefix stripped and legacy DenseNet names rewritten.

    Raises:
        WeightsError: the bytes are neither format, hold a non-tensor object, or hold no state dict.
    """
    try:
        state: object = st_load(data)
    except (SafetensorError, ValueError, OSError):
        state = _torch_load(data)
    if isinstance(state, Mapping):
        state = next((state[k] for k in NESTED if isinstance(state.get(k), Mapping)), state)
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"the checkpoint holds {type(state).__name__}, not a state dict of tensors")
    odd = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if odd:
        raise WeightsError(f"the checkpoint's state dict holds {len(odd)} entries that are not tensors: "
                           f"{_names(odd)}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = LEGACY_DENSENET.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _torch_load(data: bytes) -> object:
    """A torch checkpoint read with weights_only: anything but tensors and plain containers is refused."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except _UNREADABLE as e:
        raise WeightsError(f"the checkpoint is neither safetensors nor a torch file of tensors (torch.load "
                           f"with weights_only refused it: {_reason(e)}); save it with "
                           "torch.save(model.state_dict(), path) or as safetensors") from e


def _reason(e: Exception) -> str:
    """The line of torch's message that says why (its weights_only refusal is a page of advice)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    why = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
    return f"{type(e).__name__}: {why.split('. Please use')[0][:300]}"


def adapt_checkpoint(net: nn.Module, state: Mapping[str, Tensor], seed: int) -> bytes:
    """The network's full state dict as safetensors, from a checkpoint: RGB stem filters summed where the
    network takes one channel, the checkpoint's head dropped for the network's fresh head (initialised from
    `seed`), BatchNorm batch counters the checkpoint lacks kept at the network's; the network is loaded in place.

    Raises:
        WeightsError: tensors are missing, unexpected, or of another shape than the network's (named).
    """
    head = last_linear(net)
    head_prefix = next(name for name, m in net.named_modules() if m is head) + "."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head.reset_parameters()
    target = net.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    stem = _first_conv_key(net)
    if stem in body and body[stem].ndim == 4 and target[stem].shape[1] == 1 and body[stem].shape[1] == 3:
        body[stem] = body[stem].sum(dim=1, keepdim=True)  # grey = R + G + B: the filter sees the same energy
    expected = {k for k in target if not k.startswith(head_prefix)}
    missing = sorted(k for k in expected - set(body) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(body) - expected)
    mismatched = sorted(f"{k} {tuple(body[k].shape)} (the network: {tuple(target[k].shape)})"
                        for k in expected & set(body) if body[k].shape != target[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{label} {len(keys)}: {_names(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys]
        raise WeightsError(f"the checkpoint does not fit {type(net).__name__}: {'; '.join(parts)}")
    merged = {k: (body[k].to(target[k].dtype) if k in body else target[k]) for k in target}
    net.load_state_dict(merged, strict=True)
    return weights_to_bytes(net)


def _first_conv_key(net: nn.Module) -> str:
    """The state-dict key of the network's first convolution's weight (the stem: conv1, features.conv0)."""
    return next((f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.Conv2d)), "")


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")

"""Models: the default small CNN, a pretrained-encoder variant, the zoo (learner.zoo) re-exported, factory
loading, input normalisation, embeddings and safetensors weights."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from clreg.learner.errors import DataError, ModelFactoryError, WeightsError
from clreg.learner.zoo import densenet121 as densenet121  # the zoo, re-exported: factory strings name this module
from clreg.learner.zoo import resnet18 as resnet18
from clreg.learner.zoo import resnet50 as resnet50

DEFAULT_FACTORY = "clreg.learner.models:small_cnn"
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
EMBED_DIM = 64
MeanStd = tuple[Sequence[float], Sequence[float]]  # an input normalisation: (mean, std), one value per channel


class Shape(Protocol):
    """Images [N, channels, height, width] and labels 0..classes-1."""

    @property
    def channels(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def classes(self) -> int: ...


class Scaled(Protocol):
    """Per-channel mean and standard deviation of an input normalisation."""

    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


class Registered(Protocol):
    """What building a network reads of a registered model (the registry's Model record has it)."""

    @property
    def factory(self) -> str: ...
    @property
    def factory_kwargs(self) -> Mapping[str, Any]: ...
    @property
    def input(self) -> Shape: ...
    @property
    def normalisation(self) -> Scaled | None: ...


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3x3 + BatchNorm + ReLU + 2x2 max-pool: halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def small_cnn(channels: int, height: int, width: int, classes: int, width_mult: int = 1) -> nn.Module:
    """The default model: two conv blocks, a 64-d embedding layer and a linear head."""
    c1, c2 = 16 * width_mult, 32 * width_mult
    return nn.Sequential(
        _conv_block(channels, c1),
        _conv_block(c1, c2),
        nn.AdaptiveAvgPool2d((4, 4)),  # any input size maps to a fixed feature size
        nn.Flatten(),
        nn.Linear(c2 * 16, EMBED_DIM),
        nn.ReLU(),
        nn.Linear(EMBED_DIM, classes),
    )


def _head_prefix(model: nn.Module) -> str:
    """The module name of the head (the last nn.Linear), for telling encoder tensors from head tensors."""
    head = last_linear(model)
    return str(next(name for name, m in model.named_modules() if m is head))


def encoder_to_bytes(model: nn.Module) -> bytes:
    """The model's state dict without the head, as safetensors bytes: an encoder to transfer."""
    prefix = _head_prefix(model) + "."
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefix)}
    return st_save(state)


def pretrained_cnn(
    channels: int, height: int, width: int, classes: int, encoder_weights: str, width_mult: int = 1
) -> nn.Module:
    """The small CNN with its encoder loaded from a local safetensors file and a fresh head for `classes`.

    The file holds a small_cnn's encoder (encoder_to_bytes) or full weights (its head is dropped), from a
    model trained on another task: the transfer case, with no download.

    Raises:
        WeightsError: the file is missing, not safetensors, or not an encoder of this architecture.
    """
    model = small_cnn(channels, height, width, classes, width_mult)
    try:
        state = st_load(Path(encoder_weights).read_bytes())
    except (OSError, SafetensorError, ValueError) as e:
        raise WeightsError(f"cannot read encoder weights {encoder_weights!r}: {e}") from e
    prefix = _head_prefix(model) + "."
    encoder = {k: v for k, v in state.items() if not k.startswith(prefix)}
    expected = {k for k in model.state_dict() if not k.startswith(prefix)}
    if set(encoder) != expected:
        raise WeightsError(f"{encoder_weights!r} is not an encoder of small_cnn(width_mult={width_mult}): "
                           f"missing {sorted(expected - set(encoder))}, extra {sorted(set(encoder) - expected)}")
    try:
        model.load_state_dict(encoder, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"encoder weights {encoder_weights!r} do not fit: {e}") from e
    return model


def _resolve_factory(factory: str) -> Callable[..., nn.Module]:
    """Import `module:function` after validating the string."""
    if not FACTORY_PATTERN.fullmatch(factory):
        raise ModelFactoryError(f"invalid factory {factory!r}: expected 'package.module:function'")
    module_name, fn_name = factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelFactoryError(f"cannot import module {module_name!r} of factory {factory!r}: {e}") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelFactoryError(f"module {module_name!r} has no callable {fn_name!r}")
    return cast("Callable[..., nn.Module]", fn)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear: the classification head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelFactoryError(f"{type(model).__name__} has no nn.Linear head")
    return linears[-1]


def check_factory(factory: str, allowed: tuple[str, ...]) -> None:
    """Refuse a factory outside the allowed modules before anything is imported (a factory runs code).

    Raises:
        ModelFactoryError: the factory's module is not one of `allowed` nor below one of them.
    """
    module = factory.split(":", 1)[0]
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        raise ModelFactoryError(f"factory {factory!r} is not from an allowed module ({', '.join(allowed)}); "
                                "extend CLREG_SERVE__FACTORY_PREFIXES to allow it")


def normalisation_of(model: Registered) -> MeanStd | None:
    """A registered model's input normalisation as plain (mean, std) tuples, for build_model and Ray tasks."""
    norm = model.normalisation
    return (tuple(norm.mean), tuple(norm.std)) if norm is not None else None


def network_for(model: Registered) -> nn.Module:
    """A fresh network for a registered model: its factory with its input spec and normalisation (weights not
    loaded)."""
    spec = model.input
    return build_model(model.factory, model.factory_kwargs, spec.channels, spec.height, spec.width, spec.classes,
                       normalisation_of(model))


def _normalise_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the root module: x -> (x - mean) / std, per channel, before the network sees it."""
    x, *rest = args
    return ((x - module.get_buffer("clreg_input_mean")) / module.get_buffer("clreg_input_std"), *rest)


def normalise(model: nn.Module, normalisation: MeanStd, channels: int) -> None:
    """Make the model normalise its own input, in place: the mean and std are non-persistent buffers (they move
    with the model to its device, stay out of the state dict, so checkpoint keys stay the factory's) read by a
    forward pre-hook on the root module, so every caller (training, gate, calibration, drift, serving) gets it.

    Raises:
        ModelFactoryError: mean and std are not one value or one per channel, or not finite, or a std is not
            positive.
    """
    mean, std = (torch.tensor([float(v) for v in values], dtype=torch.float32) for values in normalisation)
    finite = bool(torch.isfinite(mean).all() and torch.isfinite(std).all())
    if len(mean) != len(std) or len(mean) not in (1, channels) or not finite or not bool((std > 0).all()):
        raise ModelFactoryError(f"normalisation needs one finite mean and one finite positive std for each of the "
                                f"{channels} channels (or one for all), got mean {list(normalisation[0])} "
                                f"and std {list(normalisation[1])}")
    model.register_buffer("clreg_input_mean", mean.view(1, -1, 1, 1), persistent=False)
    model.register_buffer("clreg_input_std", std.view(1, -1, 1, 1), persistent=False)
    model.register_forward_pre_hook(_normalise_input)


def build_model(
    factory: str, kwargs: Mapping[str, Any], channels: int, height: int, width: int, classes: int,
    normalisation: MeanStd | None = None,
) -> nn.Module:
    """Build a model from a `module:function` factory with the input spec plus kwargs; with `normalisation`
    ((mean, std) per channel), the model normalises its own input (see `normalise`).

    Raises:
        ModelFactoryError: the string is malformed, the import fails, the call fails or returns no module,
            or the normalisation does not fit the channels.
    """
    fn = _resolve_factory(factory)
    try:
        model = fn(channels=channels, height=height, width=width, classes=classes, **kwargs)
    except TypeError as e:
        raise ModelFactoryError(f"factory {factory!r} rejected its arguments: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(f"factory {factory!r} returned {type(model).__name__}, not an nn.Module")
    last_linear(model)
    if normalisation is not None:
        normalise(model, normalisation, channels)
    return model


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate activations (the head's input), captured by a forward pre-hook in eval mode."""
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        hook.remove()
        model.train(was_training)
    return captured[-1]


def weights_to_bytes(model: nn.Module) -> bytes:
    """The state dict (BatchNorm buffers included) as safetensors bytes."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return st_save(state)


def load_weights(model: nn.Module, data: bytes) -> None:
    """Load safetensors bytes into the model in place, strictly.

    Raises:
        WeightsError: the bytes are not safetensors or do not match the model's keys and shapes.
    """
    try:
        state = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise WeightsError(f"weights are not valid safetensors: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights do not fit the model: {e}") from e


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 [0,255] -> float32 in [0,1]; float kept as float32; [N,H,W] -> [N,1,H,W]."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"expected images [N,C,H,W] or [N,H,W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if np.issubdtype(x.dtype, np.floating):
        # A copy: arrays from Ray's object store are read-only, and torch must not alias them.
        return torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    raise DataError(f"expected uint8 or float images, got {x.dtype}")

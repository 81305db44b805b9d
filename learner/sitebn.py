"""Domain-specific BatchNorm: a bank of per-site BatchNorm states over shared weights, and MAP site routing.

Each site keeps its own BatchNorm running statistics AND affine scale/shift; conv and linear weights are
shared (and EWC-protected). A bank maps site -> that site's BatchNorm tensors, keyed by state-dict name
(`<layer>.weight`, `.bias`, `.running_mean`, `.running_var`, `.num_batches_tracked`), and travels as
safetensors bytes. `route` picks, for an unlabelled batch, the site whose statistics best explain it: the
Gaussian log-likelihood of the first BatchNorm layer's input under each site's running mean/variance
(that input depends only on shared weights, so one forward pass serves every site).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from clreg.learner import tensorfile
from clreg.learner.errors import DataError, WeightsError

BN = nn.modules.batchnorm._BatchNorm
FORMAT = "clreg-bnbank/1"
SiteBN = dict[str, Tensor]
Bank = dict[str, SiteBN]


def bn_layers(model: nn.Module) -> dict[str, BN]:
    """The model's BatchNorm layers by module name, in forward-definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BN)}


def bn_param_names(model: nn.Module) -> set[str]:
    """Names of the BatchNorm affine parameters: the site-specific ones, left out of the EWC penalty."""
    return {f"{name}.{p}" for name, m in bn_layers(model).items() for p, _ in m.named_parameters(recurse=False)}


def extract_site_bn(model: nn.Module) -> SiteBN:
    """A detached CPU copy of every BatchNorm tensor (affine parameters and running statistics)."""
    out: SiteBN = {}
    for name, m in bn_layers(model).items():
        for key, t in m.state_dict().items():
            out[f"{name}.{key}"] = t.detach().cpu().clone()
    return out


def apply_site_bn(model: nn.Module, site_bn: Mapping[str, Tensor]) -> None:
    """Copy a site's BatchNorm tensors into the model in place; the keys must match the model's exactly.

    Raises:
        WeightsError: a key is missing or extra, or a shape differs.
    """
    current = extract_site_bn(model)
    if set(current) != set(site_bn):
        missing, extra = sorted(set(current) - set(site_bn)), sorted(set(site_bn) - set(current))
        raise WeightsError(f"site BatchNorm state does not fit the model: missing {missing}, extra {extra}")
    layers = bn_layers(model)
    with torch.no_grad():
        for key, value in site_bn.items():
            layer, _, attr = key.rpartition(".")
            target = getattr(layers[layer], attr)
            if target.shape != value.shape:
                raise WeightsError(f"site BatchNorm tensor {key!r} has shape {tuple(value.shape)}, "
                                   f"the model {tuple(target.shape)}")
            target.copy_(value.to(target.device, target.dtype))


def site_model(model: nn.Module, bank: Mapping[str, SiteBN], site: str) -> nn.Module:
    """A deep copy of the model carrying the site's BatchNorm state (the original is untouched).

    Raises:
        WeightsError: the site is not in the bank, or its state does not fit the model.
    """
    if site not in bank:
        raise WeightsError(f"site {site!r} has no BatchNorm entry; the bank holds {sorted(bank)}")
    copied = copy.deepcopy(model)
    apply_site_bn(copied, bank[site])
    return copied


def adapted(model: nn.Module, x: Tensor, batch_size: int = 512) -> nn.Module:
    """A copy of the model whose BatchNorm running statistics are those of x (AdaBN, Li et al. 2016): the
    network as it would normalise this traffic on its own terms; affine parameters and weights unchanged."""
    copied = copy.deepcopy(model)
    for layer in bn_layers(copied).values():
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative mean over every chunk of x, not an exponential one
    copied.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            copied(x[i:i + batch_size])
    return copied.eval()


def bank_to_bytes(bank: Mapping[str, SiteBN]) -> bytes:
    """Deterministic safetensors bytes; site names live in one metadata entry (index-based tensor names)."""
    sites = sorted(bank)
    tensors = {f"{i}.{k}": v for i, s in enumerate(sites) for k, v in bank[s].items()}
    return tensorfile.dump(tensors, FORMAT, {"sites": sites})


def bank_from_bytes(data: bytes) -> Bank:
    """Inverse of bank_to_bytes.

    Raises:
        WeightsError: the bytes are not a bank written by bank_to_bytes.
    """
    tensors, info = tensorfile.load(data, FORMAT, "BatchNorm bank")
    bank: Bank = {}
    for i, site in enumerate(info["sites"]):
        bank[site] = {n.split(".", 1)[1]: t for n, t in tensors.items() if n.split(".", 1)[0] == str(i)}
    return bank


class _Captured(Exception):
    """Raised by the hook that caught the first BatchNorm's input: the rest of the forward pass is not needed."""


@torch.no_grad()
def first_bn_input(model: nn.Module, x: Tensor) -> Tensor:
    """The input activations of the model's first BatchNorm layer, from an eval-mode forward pass stopped there
    (routing a request must not cost a second full pass: on a ResNet-18 at 224 px the stem is a small part).

    Raises:
        DataError: the model has no BatchNorm layer.
    """
    layers = list(bn_layers(model).values())
    if not layers:
        raise DataError(f"{type(model).__name__} has no BatchNorm layer to route by")
    captured: list[Tensor] = []

    def grab(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args[0].detach())
        raise _Captured

    hook = layers[0].register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
    except _Captured:
        pass
    finally:
        hook.remove()
        model.train(was_training)
    return captured[0]


def route_scores(model: nn.Module, bank: Mapping[str, SiteBN], x: Tensor,
                 prior: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per site: mean per-sample Gaussian log-likelihood of the first BN input, plus log prior / N.

    From each channel's count, sum and sum of squares, taken once: a site then costs O(channels), not a pass over
    the activations (sum of (a - m)^2 = S2 - 2 m S1 + n m^2)."""
    if not bank:
        raise DataError("the BatchNorm bank is empty: no site to route to")
    act = first_bn_input(model, x).double().cpu()
    act = act.transpose(0, 1).reshape(act.shape[1], -1)  # channels x (samples * positions)
    n, s1, s2 = act.shape[1], act.sum(dim=1), (act * act).sum(dim=1)
    first = next(iter(bn_layers(model)))
    scores = {}
    for site, bn in bank.items():
        mean = bn[f"{first}.running_mean"].double()
        var = bn[f"{first}.running_var"].double() + 1e-5
        squares = s2 - 2 * mean * s1 + n * mean * mean
        log_lik = -0.5 * (squares / var + n * (var.log() + math.log(2 * math.pi))).sum() / len(x)
        log_prior = math.log(prior[site]) if prior is not None else 0.0
        scores[site] = float(log_lik) + log_prior / len(x)
    return scores


def route(model: nn.Module, bank: Mapping[str, SiteBN], x: Tensor, prior: Mapping[str, float] | None = None) -> str:
    """The MAP site for an unlabelled batch: argmax over sites of log-likelihood + log prior (uniform by default)."""
    scores = route_scores(model, bank, x, prior)
    return max(scores, key=scores.__getitem__)


def reestimate_statistics(model: nn.Module, x: Tensor, batch_size: int = 64) -> None:
    """Reset the running statistics and re-estimate them as a cumulative average over x (no gradients)."""
    layers = list(bn_layers(model).values())
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average: every batch counts equally
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size]
                if len(xb) >= 2:
                    model(xb.to(device))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)

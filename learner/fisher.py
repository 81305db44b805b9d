"""Fisher diagonal estimators: exact per-sample (layer hooks, vmap fallback), per-sample loop, minibatch-squared.

The exact estimator is the per-sample empirical Fisher E_n[(d log p(y_n | x_n) / d theta)^2] over trainable
parameters, in eval mode. Its fast path runs one forward and one backward pass of sum_n log p(y_n | x_n) per
chunk: in eval mode samples do not interact, so the gradient at each layer's output, row n, is sample n's own,
and per-sample weight gradients follow from it and the layer's input (the BackPACK / Opacus trick). Parameters
of other layer types, or used in ways the hooks cannot see, take the torch.func vmap(grad) path instead.
Memory stays bounded on large networks (a DenseNet-121 at 224x224): chunks reach the device one at a time,
each chunk's captured inputs and output gradients are freed before the next, and without an explicit
chunk size the first chunk is one sample whose captured bytes set the size of the rest (`memory_budget`).
The Fisher is always computed in float32, outside any autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from clreg.learner.images import as_float

Fisher = dict[str, Tensor]
# exact types only: a subclass may override forward or use its weights elsewhere (MultiheadAttention's out_proj)
HOOKED = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
MAX_CHUNK = 64  # a small network's chunks stay as they always were: larger ones were not faster on CPU
MEMORY_BUDGET = 1 << 30  # bytes a chunk's activations, their gradients and its graph may take on the CPU
GPU_SHARE = 4  # on a GPU: a quarter of its free memory
# Alive per captured byte at the backward's peak: the held inputs and outputs, the outputs' clones and the
# tensors autograd saved (about as large again), and the output gradients.
PEAK_PER_CAPTURED_BYTE = 3
VMAP_CHUNK = 64
# which exact way sums a convolution's squared per-sample gradients (_conv2d_sq)
PAIRED_POSITIONS, PAIRED_WEIGHTS = 6, 1 << 19  # at most 6 output positions and at least 2^19 weights: paired
UNFOLDED_WEIGHTS_PER_POSITION = 512  # at least this many weights per output position: unfolded


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached trainable parameters by name: the coordinates the Fisher is taken over."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def _subsample(x: Tensor, y: Tensor, max_samples: int | None) -> tuple[Tensor, Tensor]:
    """At most max_samples, evenly spaced so a class-sorted batch still gives every class."""
    if max_samples is None or len(x) <= max_samples:
        return x, y
    idx = torch.arange(max_samples) * len(x) // max_samples
    return x[idx], y[idx]


def _chunk(x: Tensor, y: Tensor, start: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """One (x, y) slice on the model's device, images as float32 (uint8 ones converted only now)."""
    return as_float(x[start : start + size].to(device)), y[start : start + size].to(device)


def _chunks(x: Tensor, y: Tensor, size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices of at most size samples, each moved to the device only when it is reached."""
    for start in range(0, len(x), size):
        yield _chunk(x, y, start, size, device)


def _log_lik_fn(model: nn.Module, frozen: dict[str, Tensor]) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """log p(y | x) of one sample as a function of some parameters (the rest in frozen), for grad/vmap."""

    def log_lik(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, frozen), (x.unsqueeze(0),))
        # gather, not [0, y]: indexing by a batched tensor is data-dependent control flow under vmap
        return F.log_softmax(logits, dim=-1)[0].gather(0, y.unsqueeze(0)).squeeze(0)

    return log_lik


def _vmap_squared_sums(model: nn.Module, names: set[str], chunks: Iterator[tuple[Tensor, Tensor]]) -> Fisher:
    """sum_n g_n^2 for the named parameters, per-sample gradients from vmap(grad) (model in eval mode)."""
    params = {k: p for k, p in trainable_params(model).items() if k in names}
    frozen = {k: p.detach() for k, p in model.named_parameters() if k not in params}
    frozen |= {k: b.detach() for k, b in model.named_buffers()}
    per_sample_grads = vmap(grad(_log_lik_fn(model, frozen)), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for xb, yb in chunks:
        for k, g in per_sample_grads(params, xb, yb).items():
            total[k] += g.pow(2).sum(dim=0)
    return total


def _in_eval(model: nn.Module, squared_sums: Callable[[], Fisher], n: int) -> Fisher:
    """squared_sums() / n on the CPU, computed in eval mode with the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):  # float32, whoever calls
            total = squared_sums()
    finally:
        model.train(was_training)
    return {k: (t / max(n, 1)).cpu() for k, t in total.items()}


def fisher_diagonal_vmap(
    model: nn.Module, x: Tensor, y: Tensor, chunk_size: int = 64, max_samples: int | None = None
) -> Fisher:
    """Per-sample empirical Fisher diagonal, vectorised with torch.func.vmap(grad) in chunks."""
    x, y = _subsample(x, y, max_samples)
    device = next(model.parameters()).device
    names = set(trainable_params(model))
    return _in_eval(model, lambda: _vmap_squared_sums(model, names, _chunks(x, y, chunk_size, device)), len(x))


def _linear_sq(m: nn.Linear, a: Tensor, d: Tensor) -> dict[str, Tensor]:
    """sum_n of squared per-sample gradients of a Linear layer from its input a and output gradient d."""
    if a.dim() == 2:  # g_n = d_n a_n^T, so g_n^2 = d_n^2 (a_n^2)^T: no per-sample tensor needed
        d2 = d.pow(2)
        return {"weight": d2.T @ a.pow(2), "bias": d2.sum(0)}
    a, d = a.flatten(1, -2), d.flatten(1, -2)  # extra dims are summed within a sample before squaring
    return {"weight": torch.bmm(d.transpose(1, 2), a).pow(2).sum(0), "bias": d.sum(1).pow(2).sum(0)}


def _conv2d_sq_grouped(m: nn.Conv2d, a: Tensor, d: Tensor) -> Tensor:
    """sum_n g_n^2 of the weight from one weight-gradient convolution with the samples as groups."""
    n, c_out = d.shape[:2]
    # [1, N*C_in, H, W] -> [1, N*C_out, H', W'] with N*groups groups: each sample's gradient is its own group's
    g: Tensor = torch.nn.grad.conv2d_weight(  # type: ignore[no-untyped-call]
        a.reshape(1, -1, *a.shape[2:]), (n * c_out, *m.weight.shape[1:]), d.reshape(1, -1, *d.shape[2:]),
        stride=m.stride, padding=m.padding, dilation=m.dilation, groups=n * m.groups,
    )
    return g.view(n, *m.weight.shape).pow(2).sum(0)


def _unfolded(m: nn.Conv2d, a: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """The layer's input patches [N, C_in*k*k, P] and output gradients [N, C_out, P] (P output positions)."""
    padding = cast(tuple[int, ...], m.padding)  # never a string here: _hookable leaves 'same' to vmap
    patches = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
    return patches, d.flatten(2)


def _conv2d_sq_unfolded(m: nn.Conv2d, a: Tensor, d: Tensor) -> Tensor:
    """sum_n g_n^2 of the weight, each sample's gradient one matrix product of its output gradient and patches."""
    patches, grads = _unfolded(m, a, d)
    return torch.bmm(grads, patches.transpose(1, 2)).pow_(2).sum(0).view_as(m.weight)


def _conv2d_sq_paired(m: nn.Conv2d, a: Tensor, d: Tensor) -> Tensor:
    """sum_n g_n^2 of the weight without any per-sample gradient, for layers with few output positions.

    g_n = sum_p d_np a_np^T, so sum_n g_n^2 = sum_{n,p,q} (d_np * d_nq)(a_np * a_nq)^T: one matrix product over
    the N * P(P+1)/2 position pairs (p <= q, the others counted twice).
    """
    patches, grads = _unfolded(m, a, d)
    i, j = torch.triu_indices(grads.shape[2], grads.shape[2], device=d.device)
    twice = torch.where(i == j, 1.0, 2.0).to(d.dtype)
    dd = (grads[:, :, i] * grads[:, :, j] * twice).transpose(1, 2).reshape(-1, grads.shape[1])
    aa = (patches[:, :, i] * patches[:, :, j]).transpose(1, 2).reshape(-1, patches.shape[1])
    return (dd.T @ aa).view_as(m.weight)


def _conv2d_sq(m: nn.Conv2d, a: Tensor, d: Tensor) -> dict[str, Tensor]:
    """sum_n of squared per-sample gradients of a Conv2d, by the cheapest of three exact ways for its shape.

    Measured per layer of the zoo's networks at 64 and 224 px on CPU (bench/fisher.py): few output positions
    and many weights (a ResNet's last stage at 64 px) favour the paired product, up to 10x; many weights per
    output position favour the unfolded products, whose cost is the per-sample gradients themselves; the
    grouped convolution wins where positions dominate (early layers, narrow layers on large images).
    """
    positions, weights = d.shape[2] * d.shape[3], m.weight.nelement()
    if m.groups > 1:
        weight = _conv2d_sq_grouped(m, a, d)
    elif positions <= PAIRED_POSITIONS and weights >= PAIRED_WEIGHTS:
        weight = _conv2d_sq_paired(m, a, d)
    elif weights >= UNFOLDED_WEIGHTS_PER_POSITION * positions:
        weight = _conv2d_sq_unfolded(m, a, d)
    else:
        weight = _conv2d_sq_grouped(m, a, d)
    return {"weight": weight, "bias": d.sum((2, 3)).pow(2).sum(0)}


def _batch_norm_sq(m: nn.modules.batchnorm._BatchNorm, a: Tensor, d: Tensor) -> dict[str, Tensor]:
    """sum_n of squared per-sample gradients of eval-mode BatchNorm: weight sum_p d x_hat, bias sum_p d."""
    a, d = a.reshape(*a.shape[:2], -1), d.reshape(*d.shape[:2], -1)  # [N, C, positions], also for [N, C]
    assert m.running_mean is not None and m.running_var is not None  # eval-mode BatchNorm keeps running stats
    x_hat = (a - m.running_mean.view(1, -1, 1)) * torch.rsqrt(m.running_var.view(1, -1, 1) + m.eps)
    return {"weight": (d * x_hat).sum(2).pow(2).sum(0), "bias": d.sum(2).pow(2).sum(0)}


def _hookable(m: nn.Module) -> bool:
    """Whether the hooks compute this module's per-sample gradients exactly."""
    if type(m) not in HOOKED or not any(p.requires_grad for p in m.parameters(recurse=False)):
        return False
    if isinstance(m, nn.Conv2d):  # the hook sees the input before any non-zero padding; 'same' needs sizes
        return m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if isinstance(m, BATCH_NORMS):
        return m.running_mean is not None and m.running_var is not None
    return True


def _hooked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Hookable modules by name, leaving out any sharing a parameter with another module (tied weights)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {
        name: m
        for name, m in model.named_modules()
        if _hookable(m) and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))
    }


def _samples_interact(model: nn.Module) -> bool:
    """A BatchNorm without running statistics normalises by batch statistics even in eval mode."""
    return any(isinstance(m, BATCH_NORMS) and m.running_mean is None for m in model.modules())


def _layer_sq(m: nn.Module, a: Tensor, d: Tensor) -> dict[str, Tensor]:
    """sum_n g_n^2 of a hooked module's own parameters, by parameter name."""
    if isinstance(m, nn.Linear):
        return _linear_sq(m, a, d)
    if isinstance(m, nn.Conv2d):
        return _conv2d_sq(m, a, d)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batch_norm_sq(m, a, d)
    raise TypeError(f"no per-sample gradient rule for {type(m).__name__}")


def _param_uses(out: Tensor) -> dict[int, int]:
    """How many autograd edges reach each leaf tensor, by id, in the graph of out."""
    # more than one edge: the parameter is used outside its own module's forward too, which the hooks miss
    uses: dict[int, int] = {}
    seen: set[torch.autograd.graph.Node] = set()
    stack = [out.grad_fn] if out.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if hasattr(nxt, "variable"):  # AccumulateGrad: a leaf
                uses[id(nxt.variable)] = uses.get(id(nxt.variable), 0) + 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return uses


def _capture(model: nn.Module, modules: dict[str, nn.Module], x: Tensor, y: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """(input, output gradient) of each module called exactly once in one forward + backward of sum log p(y|x)."""
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in modules}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        def hook(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
            seen[name].append((args[0].detach(), out))
            return out.clone()  # a later in-place op (ReLU(inplace=True)) must not change the tensor we hold

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    # a sum, not a mean: row n of every output gradient is then exactly sample n's own
    log_lik = F.log_softmax(logits, dim=-1).gather(1, y.unsqueeze(1)).sum()
    uses = _param_uses(log_lik)
    once = {
        name: s[0]
        for name, s in seen.items()
        if len(s) == 1 and s[0][1].requires_grad and all(uses.get(id(p), 0) <= 1 for p in modules[name].parameters())
    }
    if not once:
        return {}
    grads = torch.autograd.grad(log_lik, [out for _, out in once.values()], allow_unused=True)
    return {
        name: (a, torch.zeros_like(out) if g is None else g)
        for (name, (a, out)), g in zip(once.items(), grads, strict=True)
    }


def _captured_bytes(captured: dict[str, tuple[Tensor, Tensor]]) -> int:
    """Bytes of the inputs and output gradients one capture holds."""
    return sum(a.nelement() * a.element_size() + d.nelement() * d.element_size() for a, d in captured.values())


def _budgeted(captured: dict[str, tuple[Tensor, Tensor]], samples: int, budget: int) -> int:
    """The chunk size whose capture, measured on `samples` samples, stays within `budget` bytes at its peak."""
    per_sample = max(1, PEAK_PER_CAPTURED_BYTE * _captured_bytes(captured) // max(samples, 1))
    return max(1, min(MAX_CHUNK, budget // per_sample))


def _accumulate(total: Fisher, modules: dict[str, nn.Module], captured: dict[str, tuple[Tensor, Tensor]]) -> set[str]:
    """Add one chunk's sum_n g_n^2 of every hooked layer to total; the parameters it covered."""
    done: set[str] = set()
    for name, (a, d) in captured.items():
        for pname, sq in _layer_sq(modules[name], a, d).items():
            key = f"{name}.{pname}" if name else pname
            if key in total:  # skips a frozen parameter and a missing bias
                total[key] += sq
                done.add(key)
    return done


def _hooked_squared_sums(model: nn.Module, x: Tensor, y: Tensor, chunk_size: int | None, budget: int) -> Fisher:
    """sum_n g_n^2 for every trainable parameter: layer hooks where exact, vmap(grad) for the rest.

    Without a chunk size, the first chunk is one sample and its capture sizes the following chunks to `budget`.
    """
    device = next(model.parameters()).device
    total = {k: torch.zeros_like(p) for k, p in trainable_params(model).items()}
    modules = {} if _samples_interact(model) else _hooked_modules(model)
    covered: set[str] | None = None  # parameters the hooks handled in every chunk
    start, size = 0, chunk_size or 1
    while start < len(x):
        xb, yb = _chunk(x, y, start, size, device)
        captured = _capture(model, modules, xb, yb)
        done = _accumulate(total, modules, captured)
        covered = done if covered is None else covered & done
        start, size = start + len(xb), chunk_size or _budgeted(captured, len(xb), budget)
        del xb, yb, captured  # this chunk's activations go before the next chunk's arrive
    rest = set(total) - (covered or set())
    if rest:
        total.update(_vmap_squared_sums(model, rest, _chunks(x, y, chunk_size or VMAP_CHUNK, device)))
    return total


def default_budget(device: torch.device) -> int:
    """Bytes one chunk may take: MEMORY_BUDGET on the CPU, a GPU_SHARE of the free memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(MEMORY_BUDGET, free // GPU_SHARE)
    return MEMORY_BUDGET


def fisher_diagonal(
    model: nn.Module, x: Tensor, y: Tensor, chunk_size: int | None = None, max_samples: int | None = None,
    memory_budget: int | None = None,
) -> Fisher:
    """Per-sample empirical Fisher diagonal: one forward and backward per chunk, per-sample gradients from hooks.

    chunk_size None sizes the chunks from a one-sample first chunk so that each stays within memory_budget bytes
    (None: default_budget of the model's device).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    x, y = _subsample(x, y, max_samples)
    budget = memory_budget or default_budget(next(model.parameters()).device)
    return _in_eval(model, lambda: _hooked_squared_sums(model, x, y, chunk_size, budget), len(x))


def fisher_per_sample_loop(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The same Fisher, one backward pass per sample: the slow reference for tests and benchmarks."""
    device = next(model.parameters()).device
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    was_training = model.training
    model.eval()
    try:
        for i in range(len(x)):
            log_p = F.log_softmax(model(as_float(x[i : i + 1].to(device))), dim=-1)[0, y[i]]
            grads = torch.autograd.grad(log_p, [p for _, p in named])
            for (k, _), g in zip(named, grads, strict=True):
                total[k] += g.pow(2)
    finally:
        model.train(was_training)
    return {k: (t / max(len(x), 1)).cpu() for k, t in total.items()}


def fisher_minibatch_squared(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 32) -> dict[str, Tensor]:
    """Avalanche's estimator: the mean over minibatches of the squared mean-loss gradient (biased low)."""
    device = next(model.parameters()).device
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    batches = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = _chunk(x, y, start, batch_size, device)
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, [p for _, p in named])
            for (k, _), g in zip(named, grads, strict=True):
                total[k] += g.pow(2)
            batches += 1
    finally:
        model.train(was_training)
    return {k: (t / max(batches, 1)).cpu() for k, t in total.items()}

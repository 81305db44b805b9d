"""The optimizer steps of one site's training: shuffled minibatches, the objective, and the head-only warm-up.

Each step minimises CE_w(new site's minibatch) + replay_weight * CE(replayed minibatches) + (lambda / 2) * P,
with P the EWC penalty (learner.ewc). Images reach the model as float32 one minibatch at a time
(learner.images); the forward runs under the configured precision (learner.optim), the penalty in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.learner import optim
from clreg.learner.ewc import Quadratic, quadratic_penalty
from clreg.learner.images import as_float
from clreg.learner.replay import Rehearsal
from clreg.learner.sitebn import BN

PARTS = ("loss", "ce", "replay", "penalty")


@dataclass
class Loop:
    """What every optimizer step needs besides the data: the objective's parts and how a step is taken."""

    opt: torch.optim.Optimizer
    ewc: Quadratic | None  # every earlier entry folded into one (frozen parameters left out: constant penalty)
    ewc_lambda: float
    replay_weight: float
    batch_size: int
    weights: Tensor | None  # per-class CE weights, None for plain CE
    gen: torch.Generator  # the minibatch order
    precision: optim.Precision
    rehearsal: Rehearsal | None = None


def class_weights(y: Tensor, classes: int, enabled: bool) -> Tensor | None:
    """Inverse-frequency weights n / (K * n_k), so rare classes count as much as common ones."""
    if not enabled:
        return None
    counts = torch.bincount(y, minlength=classes).float().clamp(min=1.0)
    return len(y) / (classes * counts)


def _step(model: nn.Module, x: Tensor, y: Tensor, loop: Loop) -> dict[str, Tensor]:
    """One optimizer step on one minibatch (with the replayed ones); its loss and the loss's parts."""
    with loop.precision.autocast():
        ce = F.cross_entropy(model(as_float(x)), y, weight=loop.weights)
        replayed = loop.rehearsal.loss(model) if loop.rehearsal else torch.zeros((), device=x.device)
    penalty = quadratic_penalty(model, loop.ewc) if loop.ewc else torch.zeros((), device=x.device)
    loss = ce.float() + loop.replay_weight * replayed.float() + (loop.ewc_lambda / 2.0) * penalty
    loop.precision.step(loop.opt, loss)
    return {"loss": loss, "ce": ce, "replay": replayed, "penalty": penalty}


def epoch_steps(model: nn.Module, x: Tensor, y: Tensor, loop: Loop,
                limit: int | None = None) -> tuple[dict[str, float], int]:
    """One pass over shuffled minibatches, at most `limit` steps: the sample-weighted mean loss, CE (new site),
    replayed CE and penalty, and the number of steps taken."""
    order = torch.randperm(len(x), generator=loop.gen)
    sums = dict.fromkeys(PARTS, 0.0)
    seen = steps = 0
    for start in range(0, len(x), loop.batch_size):
        idx = order[start : start + loop.batch_size]
        if len(idx) < 2:  # a single sample gives BatchNorm no batch statistics
            continue
        if limit is not None and steps >= limit:
            break
        for key, value in _step(model, x[idx], y[idx], loop).items():
            sums[key] += float(value.detach()) * len(idx)
        seen += len(idx)
        steps += 1
    return {k: v / max(seen, 1) for k, v in sums.items()}, steps


def warm_up(model: nn.Module, x: Tensor, y: Tensor, loop: Loop, steps: int) -> dict[str, float]:
    """`steps` optimizer steps on the head alone (every other parameter frozen, every BatchNorm layer in eval
    mode, so no statistic moves either), passing over the data as often as that takes; the mean loss parts."""
    rows: list[tuple[dict[str, float], int]] = []
    with optim.requires_grad_off(optim.all_but_head(model)):
        optim.set_train_mode(model, [m for m in model.modules() if isinstance(m, BN)])
        done = 0
        while done < steps:
            row, taken = epoch_steps(model, x, y, loop, limit=steps - done)
            if taken == 0:
                break
            rows.append((row, taken))
            done += taken
    total = max(sum(n for _, n in rows), 1)
    return {k: sum(r[k] * n for r, n in rows) / total for k in PARTS}

"""Model factories for the Ray tests, imported by module:function inside Ray workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from clreg.learner.models import small_cnn


def dies(channels: int, height: int, width: int, classes: int, marker: str) -> nn.Module:
    """Count this try in the marker file, then kill the worker process itself (as an OOM kill would)."""
    with Path(marker).open("a") as f:
        f.write("try\n")
    os._exit(1)


class _Slow(nn.Module):
    """A network whose every training forward pass takes at least `pause_s`: epochs long enough to watch."""

    def __init__(self, inner: nn.Module, pause_s: float) -> None:
        super().__init__()
        self.inner, self.pause_s = inner, pause_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.pause_s)
        return self.inner(x)


def slow(channels: int, height: int, width: int, classes: int, pause_s: float) -> nn.Module:
    return _Slow(small_cnn(channels, height, width, classes), pause_s)

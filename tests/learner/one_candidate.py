"""One candidate of one site in a Ray task: the search's Ray path with a single setting, as the tests call it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from clreg.learner.errors import TrainingFailed
from clreg.learner.models import MeanStd
from clreg.learner.remote import search_on_ray
from clreg.learner.train import TrainConfig, TrainResult
from clreg.learner.update import UpdateData


def train_on_ray(factory: str, factory_kwargs: dict[str, Any], spec: tuple[int, int, int, int],
                 weights: bytes | None, ewc_state: bytes | None, x: np.ndarray, y: np.ndarray, site: str,
                 cfg: TrainConfig, timeout_s: float = 600, bn_bank: bytes | None = None,
                 progress: Callable[[dict], None] | None = None, poll_s: float = 0.5,
                 stop: threading.Event | None = None, normalisation: MeanStd | None = None) -> TrainResult:
    """Train one site with one setting in a Ray task (a search of one candidate).

    Raises:
        TrainingFailed: the task raised, its worker died twice, or it ran past timeout_s.
        TrainingInterrupted: `stop` was set while the task ran.
    """
    relay_rows = (lambda _c, _s, row: progress(row)) if progress is not None else None
    [outcome] = search_on_ray(factory, factory_kwargs, spec, weights, ewc_state, bn_bank,
                              UpdateData(sites=[(site, x, y)]), [cfg], relay_rows, timeout_s, poll_s, stop,
                              normalisation=normalisation)
    if isinstance(outcome, TrainingFailed):
        raise TrainingFailed(f"training on site {site!r} {str(outcome).removeprefix('training ')}")
    return outcome.result

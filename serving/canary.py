"""A replica's share of the weighted canary (registry/canary.py): a candidate answers `share` of the requests that
name a site it is validated at. Its answer is the request's answer (and its version the X-Model-Version); if it fails,
the failure is counted and production answers, so no request fails for the canary. What it answered, and each
answer's probability of being right (the label-free estimate), are counted per site and written with the replica's
other records."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from clreg.registry.canary import CanaryCounts, CanaryRun
from clreg.serving.inference import Job, Loaded, Scores, infer
from clreg.serving.recorder import Recorder

log = logging.getLogger(__name__)


class Canary:
    def __init__(self, recorder: Recorder) -> None:
        self.candidates: dict[str, tuple[CanaryRun, Loaded]] = {}  # model -> its canary
        self._recorder = recorder
        self._random = random.Random()

    def pick(self, model: str, site: str | None) -> tuple[CanaryRun, Loaded] | None:
        """The canary to answer this request: only for a site it is validated at, with probability `share`."""
        entry = self.candidates.get(model)
        if entry is None or site is None or site not in entry[0].sites:
            return None
        return entry if self._random.random() < entry[0].policy.share else None

    def answer(self, chosen: tuple[CanaryRun, Loaded], x: torch.Tensor, site: str) -> Scores | None:
        """The canary's scores for the request, or None when it failed (counted; production answers instead)."""
        run, loaded = chosen
        try:
            return infer([Job(loaded, x, site)])[0]
        except Exception:  # the canary's failure is never the request's: counted against its error rate
            log.exception("canary %s v%s failed on a request", run.model, run.version)
            self._recorder.add_canary((run.model, run.version, site), CanaryCounts(requests=1, errors=1))
            return None

    def count(self, chosen: tuple[CanaryRun, Loaded], site: str, correct: np.ndarray) -> None:
        """Count a request the canary answered, with each answer's probability of being right."""
        run = chosen[0]
        self._recorder.add_canary((run.model, run.version, site),
                                  CanaryCounts(requests=1, samples=len(correct), correct_sum=float(np.sum(correct))))

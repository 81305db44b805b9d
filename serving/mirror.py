"""Mirror: a replica's share of shadow evaluation. A candidate under a shadow run (registry/shadow.py) answers
`share` of its model's requests beside production, on one worker thread off the request's path; its answers
are discarded, and how often it agreed with production (labels, or decisions at the site's threshold) and its
calibrated confidence are counted per site and written with the replica's other records.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from clreg.registry.shadow import NO_SITE, ShadowCounts, ShadowRun
from clreg.serving.inference import Job, Loaded, infer
from clreg.serving.recorder import Recorder

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, recorder: Recorder, max_waiting: int = 8) -> None:
        self.candidates: dict[str, tuple[ShadowRun, Loaded]] = {}  # model -> its mirrored candidate
        self.skipped = 0  # mirrored requests dropped because the worker was behind (production never waits)
        self._recorder = recorder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clreg-shadow")
        self._slots = threading.BoundedSemaphore(max_waiting)
        self._random = random.Random()

    def offer(self, model: str, x: torch.Tensor, site: str | None, answered_site: str | None,
              production: np.ndarray, threshold: float | None) -> None:
        """Mirror this request with probability `share` when `model` has a candidate; never blocks."""
        entry = self.candidates.get(model)
        if entry is None or self._random.random() >= entry[0].policy.share:
            return
        if not self._slots.acquire(blocking=False):
            self.skipped += 1
            return
        run, loaded = entry
        self._pool.submit(self._compare, run, loaded, x, site, answered_site or NO_SITE, production, threshold)

    def _compare(self, run: ShadowRun, loaded: Loaded, x: torch.Tensor, site: str | None, answered_site: str,
                 production: np.ndarray, threshold: float | None) -> None:
        try:
            probs = infer([Job(loaded, x, site)])[0].probabilities
            agreed = _labels(probs, threshold) == _labels(production, threshold)
            counts = ShadowCounts(requests=1, samples=len(probs), agreed=int(agreed.sum()),
                                  confidence_sum=float(probs.max(axis=1).sum()))
            self._recorder.add_shadow((run.model, run.version, answered_site), counts)
        except Exception:  # the shadow's failure is never the request's; it shows as missing mirrored requests
            log.exception("shadow run of %s v%s failed on a request", run.model, run.version)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _labels(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """What the site acts on: the decision at its threshold for a binary model with one, else the label."""
    return (probs[:, 1] >= threshold).astype(int) if threshold is not None else probs.argmax(axis=1)

"""What replicas keep for the drift watch and the label-free estimate, gathered in memory and written every
interval in one round trip: a request never waits on Redis, and a replica's writes do not grow with its
request rate (one pipeline per interval, whatever the traffic)."""

from __future__ import annotations

import logging
import threading

import numpy as np

from clreg.registry.canary import Canaries, CanaryCounts
from clreg.registry.errors import RegistryError
from clreg.registry.inputs import Images, InputLog
from clreg.registry.shadow import ShadowCounts, Shadows

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, inputs: InputLog, interval_s: float, shadows: Shadows | None = None,
                 canaries: Canaries | None = None) -> None:
        self._inputs = inputs
        self._shadows = shadows
        self._shadow_counts: dict[tuple[str, int, str], ShadowCounts] = {}
        self._canaries = canaries
        self._canary_counts: dict[tuple[str, int, str], CanaryCounts] = {}
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._images: Images = {}
        self._confidences: dict[tuple[str, str], list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clreg-inputs", daemon=True)
        self._thread.start()

    def add(self, model: str, x: np.ndarray, version: int, site: str | None, correct: np.ndarray) -> None:
        """Keep a request's sampled images and, for a site, each answer's probability of being right."""
        with self._lock:
            if len(x):
                self._images.setdefault(model, []).append((x, version, site))
            if site is not None and len(correct):
                self._confidences.setdefault((model, site), []).extend(float(c) for c in correct)

    def add_shadow(self, key: tuple[str, int, str], counts: ShadowCounts) -> None:
        """Add a mirrored request's figures ((model, candidate version, site) -> counts)."""
        with self._lock:
            self._shadow_counts[key] = self._shadow_counts.get(key, ShadowCounts()) + counts

    def add_canary(self, key: tuple[str, int, str], counts: CanaryCounts) -> None:
        """Add a canary's figures on one request ((model, candidate version, site) -> counts)."""
        with self._lock:
            self._canary_counts[key] = self._canary_counts.get(key, CanaryCounts()) + counts

    def flush(self) -> None:
        """Write what was gathered; on a store error inputs are dropped (the watch and estimate use recent
        data), shadow counts are kept for the next write (a verdict needs every mirrored request)."""
        with self._lock:
            images, self._images = self._images, {}
            confidences, self._confidences = self._confidences, {}
            shadow, self._shadow_counts = self._shadow_counts, {}
            canary, self._canary_counts = self._canary_counts, {}
        if images or confidences:
            try:
                self._inputs.write(images, confidences)
            except (RegistryError, ValueError) as e:
                log.warning("prediction inputs not recorded: %s", e)
        if shadow and self._shadows is not None:
            try:
                self._shadows.record(shadow)
            except RegistryError as e:
                log.warning("shadow figures not recorded yet: %s", e)
                for key, counts in shadow.items():
                    self.add_shadow(key, counts)
        if canary and self._canaries is not None:
            try:
                self._canaries.record(canary)
            except RegistryError as e:  # kept for the next write: the verdict needs every answered request
                log.warning("canary figures not recorded yet: %s", e)
                for key, c in canary.items():
                    self.add_canary(key, c)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def close(self) -> None:
        """Stop the writer after one last flush."""
        self._stop.set()
        self._thread.join(self._interval_s + 5)
        self.flush()

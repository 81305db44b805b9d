"""The stores every pipeline step reads (with the reads they share), and the daemon's context: the stores plus
each step's own settings, which the pipeline hands to each step."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from clreg.learner.answer import Answerer
from clreg.learner.models import load_weights, network_for
from clreg.learner.sitebn import Bank, bank_from_bytes
from clreg.learner.train import TrainConfig
from clreg.monitor.drift import DriftConfig
from clreg.monitor.features import FeatureConfig
from clreg.registry.artifacts import Artifact, ArtifactStore, VersionArtifacts
from clreg.registry.batches import load_arrays
from clreg.registry.connection import StoreConfig
from clreg.registry.events import EventLog
from clreg.registry.records import Batch, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookConfig
from clreg.settings import GateConfig, RetentionSettings, SearchConfig, Settings, TriggerConfig, WatchConfig


@dataclass(frozen=True)
class Stores:
    """The registry, the artifact store and the event log, with the reads steps share: a batch cache, a
    version's network and per-site answers, its lineage."""

    registry: RedisRegistry
    artifacts: ArtifactStore
    events: EventLog
    cache_batches: int = 256
    _arrays: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict, compare=False)
    _arrays_lock: threading.Lock = field(default_factory=threading.Lock, compare=False)
    _learnt: OrderedDict[tuple[str, int, float], tuple[str, ...]] = field(default_factory=OrderedDict, compare=False)

    def arrays(self, model: Model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """A batch's (x, y); the most recently used batches stay in memory (batches are immutable). The daemon's
        loop and its scheduled jobs share the cache, hence the lock."""
        with self._arrays_lock:
            if batch.id in self._arrays:
                self._arrays.move_to_end(batch.id)
                return self._arrays[batch.id]
        arrays = load_arrays(self.artifacts, batch, model.input)
        with self._arrays_lock:
            self._arrays[batch.id] = arrays
            while len(self._arrays) > self.cache_batches:
                self._arrays.popitem(last=False)
        return arrays

    def module(self, model: Model, weights_sha: str) -> nn.Module:
        """The model's network with the verified weights of that digest, in eval mode."""
        net = network_for(model)
        load_weights(net, self.artifacts.get(weights_sha))
        return net.eval()

    def answerer(self, model: Model, version: ModelVersion) -> Answerer:
        """Which network answers each site, as a serving replica picks it; without temperatures, which never
        change a label (so no calibration artifact is read)."""
        return Answerer.of(self.module(model, version.artifacts[Artifact.WEIGHTS]), self.bank(version))

    def bank(self, version: ModelVersion) -> Bank | None:
        """The version's per-site BatchNorm bank (None under the other BatchNorm policies)."""
        raw = VersionArtifacts(self.artifacts, version).optional(Artifact.BN_BANK)
        return bank_from_bytes(raw) if raw is not None else None

    def production(self, model: str) -> ModelVersion | None:
        return self.registry.version_by_alias(model)

    def learnt_batches(self, version: ModelVersion | None) -> list[str]:
        """Every batch id a version has learnt, following its parents back to the first version. A version's
        lineage never changes, so each version's answer is kept: an update's assembly, its gate and the next
        update walk one version, not fifty (its creation time is in the key: a model made again has other versions)."""
        chain: list[ModelVersion] = []
        known: tuple[str, ...] = ()
        while version is not None:
            with self._arrays_lock:
                found = self._learnt.get((version.model, version.number, version.created_at))
            if found is not None:
                known = found
                break
            chain.append(version)
            parent = version.lineage.parent
            version = None if parent is None else self.registry.get_version(version.model, parent)
        for v in reversed(chain):
            known += tuple(v.lineage.batch_ids)
            with self._arrays_lock:
                self._learnt[(v.model, v.number, v.created_at)] = known
                while len(self._learnt) > self.cache_batches:  # the most recent versions are the ones walked
                    self._learnt.popitem(last=False)
        return list(known)

    def images(self, model: Model) -> Callable[[str], np.ndarray]:
        """A batch's images by its id (what a replay memory stored by reference is read from)."""
        return lambda batch_id: self.arrays(model, self.registry.batches.get(batch_id))[0]

    @staticmethod
    def train_refs(batches: list[Batch]) -> dict[str, list[tuple[str, int]]]:
        """Per site, where each training sample of the batches lies (batch id, row), in split_by_site's order."""
        refs: dict[str, list[tuple[str, int]]] = {}
        for batch in batches:
            refs.setdefault(batch.site, []).extend((batch.id, int(i)) for i in batch.train_index)
        return refs

    def split_by_site(self, model: Model, batch_ids: list[str], part: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per site, the concatenated train or held-out samples of the given batches."""
        chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for batch_id in batch_ids:
            batch = self.registry.batches.get(batch_id)
            x, y = self.arrays(model, batch)
            idx = batch.train_index if part == "train" else batch.heldout_index
            chunks.setdefault(batch.site, []).append((x[idx], y[idx]))
        return {site: (np.concatenate([c[0] for c in cs]), np.concatenate([c[1] for c in cs]))
                for site, cs in chunks.items()}


@dataclass(frozen=True)
class DriftStep:
    """The drift step's settings: Evidently's tests, where workspace snapshots go (for `evidently ui`), the URL
    alerts link to."""

    cfg: DriftConfig
    workspace: Path
    public_url: str = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Context:
    """What the daemon holds: the stores and every step's settings. Steps take only their part."""

    stores: Stores
    train: TrainConfig
    features: FeatureConfig
    drift: DriftStep
    gate: GateConfig
    trigger: TriggerConfig
    webhook: WebhookConfig
    retention: RetentionSettings = RetentionSettings()
    watch: WatchConfig = WatchConfig()
    search: SearchConfig = SearchConfig()

    @property
    def registry(self) -> RedisRegistry:
        return self.stores.registry

    @property
    def events(self) -> EventLog:
        return self.stores.events

    @property
    def artifacts(self) -> ArtifactStore:
        return self.stores.artifacts


def build(settings: Settings, store: StoreConfig, public_url: str) -> Context:
    """The pipeline context for a running stack: each step gets its own sub-config."""
    registry = RedisRegistry(store)
    stores = Stores(registry=registry, artifacts=ArtifactStore(settings.artifacts()), events=EventLog(registry))
    return Context(stores=stores, train=settings.train, features=settings.features,
                   drift=DriftStep(settings.drift, settings.home / "workspace", public_url),
                   gate=settings.gate, trigger=settings.trigger, webhook=settings.webhook,
                   retention=settings.retention,
                   watch=settings.watch, search=settings.search)

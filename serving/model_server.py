"""ModelServer: answers /v1/predict and swaps itself to each new production version in place.

Each replica polls the store's serving generation (one GET, bumped by every alias move and site change);
when it moved, every model's production alias is read in one pipelined round trip. For a new version it
loads the weights (the artifact store verifies their sha256), warms the model up, and then replaces one
reference holding (version, model):
requests in flight finish on the old model, the next ones use the new one, no replica restarts.
A version whose artifacts are corrupt or whose weights do not load is never served; the replica keeps the
previous one and says so in an event. A store that is away for a moment is retried at the next poll.
Every replica beats which versions it serves (registry/replicas.py), so clients learn when a version is served.
Under the per-site BatchNorm policy a replica keeps one copy of the network per site: a request naming a
learnt site uses that site's BatchNorm, any other request is routed to the site whose BatchNorm
statistics explain its images best (MAP), and the answer says which. Probabilities are temperature-
scaled with that site's temperature (the pooled one for requests of no learnt site), so a site's
threshold applies to probabilities calibrated on that site's own held-out data. With batching on
(batch_max_requests > 1), concurrent requests share forward passes through Serve's @serve.batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clreg.learner.answer import Answerer
from clreg.learner.errors import LearnerError
from clreg.learner.estimate import expected_correct
from clreg.learner.models import check_factory, load_weights, network_for, to_tensor
from clreg.learner.sitebn import bank_from_bytes
from clreg.registry.artifacts import Artifact, ArtifactStore, VersionArtifacts
from clreg.registry.canary import Canaries, CanaryRun
from clreg.registry.errors import NotFound, RegistryError, StoreUnavailable
from clreg.registry.events import EventLog
from clreg.registry.inputs import InputLog
from clreg.registry.locked import overlaid
from clreg.registry.readiness import assess_sites
from clreg.registry.records import Model, ModelVersion, check_name
from clreg.registry.replicas import Replicas
from clreg.registry.shadow import ShadowRun, Shadows
from clreg.registry.store import RedisRegistry
from clreg.serving.auth import Tokens
from clreg.serving.canary import Canary
from clreg.serving.config import ServingConfig
from clreg.serving.errors import BadRequest, MethodNotAllowed, ModelNotFound, NotReady, SiteNotValidated
from clreg.serving.guard import check_host, read_body
from clreg.serving.inference import Job, Loaded, Scores, infer
from clreg.serving.inputs import parse_inputs
from clreg.serving.mirror import Mirror
from clreg.serving.recorder import Recorder
from clreg.serving.responses import error_response

log = logging.getLogger(__name__)
Run = TypeVar("Run", ShadowRun, CanaryRun)


def read_moves(registry: RedisRegistry,
               shadows: Shadows) -> tuple[dict[str, int], dict[str, ShadowRun], dict[str, float]]:
    """What a replica reads once the serving generation moved: each model's production version, the mirrored
    candidates and the sites' thresholds."""
    targets = registry.resolve_all()
    thresholds = {s.name: s.threshold for s in registry.sites() if s.threshold is not None}
    return targets, shadows.active_all(list(targets)), thresholds


@dataclass(eq=False)
class Slot:
    """One model on this replica: the version answering it, replaced in place on promotion."""

    loaded: Loaded


_PARSE_INLINE_BYTES = 4 << 20  # an array body up to this size is parsed on the event loop (see _predict)


class ModelServer:
    """A Serve deployment class; `deployment()` below wraps it with its options."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = ServingConfig.model_validate(cfg)
        torch.set_num_threads(self.cfg.torch_threads)
        # A GPU only when the deployment asked Ray for one (ray_actor_options) and this worker sees it.
        self.device = torch.device("cuda" if self.cfg.replica_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.registry = RedisRegistry(self.cfg.store)
        self.artifacts = ArtifactStore(self.cfg.artifacts_url)
        self.events = EventLog(self.registry)
        self.inputs = InputLog(self.cfg.store, self.cfg.inputs)
        self.tokens = Tokens(self.cfg.admin_token_sha256, self.cfg.ops_token_sha256)
        self.shadows = Shadows(self.registry)
        self.canaries = Canaries(self.registry)
        # Gathered in memory and written every interval in one round trip, never on a request's path.
        self._recorder = Recorder(self.inputs, self.cfg.record_interval_s, self.shadows, self.canaries)
        self.mirror = Mirror(self._recorder)
        self.canary = Canary(self._recorder)
        self.replicas = Replicas(self.registry, self.cfg.beat_interval_s)
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._beaten = 0.0
        self._generation: int | None = None  # the serving generation last synced to
        self._retry = False  # a swap failed for a transient reason, or a model was opened: sync at the next poll
        # Every model (a dict), or with models_per_replica the ones Serve's multiplexing LRU holds (weak
        # references: a model the LRU drops is gone from here too, so memory stays bounded by N).
        self.slots: MutableMapping[str, Slot] = {}
        self._open: Callable[[str], Awaitable[Slot]] | None = None
        if self.cfg.models_per_replica is not None:
            self.slots = weakref.WeakValueDictionary()
            self._open = serve.multiplexed(max_num_models_per_replica=self.cfg.models_per_replica)(self._opener())
        self.thresholds: dict[str, float] = {}
        self._failed: dict[str, int] = {}
        self._stop = threading.Event()
        batched: Any = self._batched  # @serve.batch adds the setters at run time
        batched.set_max_batch_size(self.cfg.batch_max_requests)
        batched.set_batch_wait_timeout_s(self.cfg.batch_wait_s)
        self.sync()
        self._beat()
        threading.Thread(target=self._watch, name="clreg-swap", daemon=True).start()

    @property
    def loaded(self) -> dict[str, Loaded]:
        """The version answering each model held here."""
        return {name: slot.loaded for name, slot in list(self.slots.items())}

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            try:
                swapped = self.sync()
                if swapped or time.monotonic() - self._beaten >= self.cfg.beat_interval_s:
                    self._beat()
            except RegistryError as e:  # Redis away: keep serving what is loaded
                log.warning("registry poll failed: %s", e)

    def _beat(self) -> None:
        """Say which version of each model this replica answers with (a swap beats at once)."""
        served = {name: loaded.version for name, loaded in self.loaded.items()}
        self.replicas.beat(self.replica_id, served, on_demand=self._open is not None)
        self._beaten = time.monotonic()

    def sync(self) -> bool:
        """Swap every held model whose production alias moved (and load every model, unless they are loaded on
        demand); load or drop mirrored candidates; whether any version changed. While nothing moved (the
        store's serving generation is unchanged and no swap waits for a retry) a poll is one GET, whatever the
        number of models."""
        generation = self.registry.generation()  # read first: a move during this sync bumps it again
        if generation == self._generation and not self._retry:
            return False
        self._retry, swapped = False, False
        targets, runs, self.thresholds = read_moves(self.registry, self.shadows)
        for name, target in targets.items():
            slot = self.slots.get(name)
            if (slot and slot.loaded.version == target) or self._failed.get(name) == target:
                continue
            if slot is None and self._open is not None:  # loaded on demand, at its first request
                continue
            swapped = self._swap(self.registry.get_model(name), target, slot) or swapped
        self.mirror.candidates = self._candidates(runs, self.mirror.candidates)
        self.canary.candidates = self._candidates(self.canaries.active_all(list(targets)), self.canary.candidates)
        self._generation = generation
        return swapped

    def _swap(self, model: Model, number: int, slot: Slot | None) -> bool:
        started = time.perf_counter()
        loaded = self._try_load(model, number)
        if loaded is None:
            return False
        previous = slot.loaded.version if slot else None
        if slot is None:
            self.slots[model.name] = Slot(loaded)
        else:
            slot.loaded = loaded  # in place: requests in flight keep the Loaded they were admitted with
        self.events.append(model.name, "serving.swapped", version=number, previous=previous, device=str(self.device),
                           seconds=round(time.perf_counter() - started, 4))
        return True

    def _try_load(self, model: Model, number: int) -> Loaded | None:
        """The version loaded, or None: retried at the next poll when a store was away, never again when
        its artifacts are corrupt or its weights do not load (an event says so)."""
        try:
            return self._load(model, self.registry.get_version(model.name, number))
        except StoreUnavailable as e:  # Redis or the artifact store away for a moment: try again next poll
            self._retry = True
            log.warning("version %s of %s not loaded yet: %s", number, model.name, e)
        except (RegistryError, LearnerError, KeyError, RuntimeError) as e:  # corrupt or unloadable: never served
            self._failed[model.name] = number
            self.events.append(model.name, "serving.failed", version=number, error=str(e))
            log.error("version %s of %s not loaded: %s", number, model.name, e)
        return None

    def _candidates(self, runs: Mapping[str, Run], held: Mapping[str, tuple[Run, Loaded]]
                    ) -> dict[str, tuple[Run, Loaded]]:
        """The candidates of shadow or canary runs: each newly started one loaded (for a model held here), those
        still running kept, those whose run ended dropped."""
        candidates = {}
        for name, run in runs.items():
            kept = held.get(name)
            if kept is not None and kept[0].version == run.version:
                candidates[name] = kept
            elif name in self.slots and self._failed.get(name) != run.version:
                loaded = self._try_load(self.registry.get_model(name), run.version)
                if loaded is not None:
                    candidates[name] = (run, loaded)
        return candidates

    def _opener(self) -> Callable[[str], Awaitable[Slot]]:
        """Serve's multiplexing loader: a model's production version, loaded when a request first needs it."""
        async def open_model(name: str) -> Slot:
            slot = Slot(await asyncio.to_thread(self._load_production, name))
            self.slots[name] = slot
            self._retry = True  # a promotion during the load is caught by the next poll
            return slot
        return open_model

    def _load_production(self, name: str) -> Loaded:
        model = self._known(name)
        number = self.registry.resolve(name)
        if number is None:
            raise NotReady(f"model {name!r} has no production version yet")
        try:
            return self._load(model, self.registry.get_version(name, number))
        except (RegistryError, LearnerError, KeyError, RuntimeError) as e:
            raise NotReady(f"version {number} of {name!r} could not be loaded: {e}") from e

    def _load(self, model: Model, version: ModelVersion) -> Loaded:
        """Build, verify (the artifact store checks every sha256) and warm up one version on this replica's device."""
        spec = model.input
        check_factory(model.factory, self.cfg.factory_prefixes)  # a record rewritten behind the API runs nothing
        stored = VersionArtifacts(self.artifacts, version)
        module = network_for(model)
        load_weights(module, stored.get(Artifact.WEIGHTS))
        module = module.to(self.device).eval()
        raw_bank, calibration = stored.optional(Artifact.BN_BANK), stored.calibration()
        answerer = Answerer.of(module, bank_from_bytes(raw_bank) if raw_bank is not None else None, calibration)
        with torch.no_grad():  # warm-up, so the first real request does not pay for it
            for net in answerer.networks():
                net(torch.zeros(1, spec.channels, spec.height, spec.width, device=self.device))
        return Loaded(version=version.number, answerer=answerer, spec=spec, device=str(self.device),
                      calibration=calibration, rules=model.readiness, metric=model.task_metric,
                      readiness=assess_sites(overlaid(self.registry, calibration, model.name, version.number),
                                             model.readiness, model.task_metric))  # locked sets' figures first

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._predict(request)
        except Exception as e:  # the HTTP edge: every failure becomes a JSON error, never a dropped request
            return error_response(e)

    async def _predict(self, request: Request) -> Response:
        check_host(request.headers.get("host"), self.cfg.allowed_hosts)
        if request.method != "POST":
            raise MethodNotAllowed("use POST /v1/predict with a JSON, npz or DICOM body")
        if self.cfg.predict_needs_token:
            self.tokens.require_reader(request.headers.get("authorization"))
        name = self._model_name(request.query_params.get("model"))
        loaded = await self._current(name)
        body = await read_body(request.headers.get("content-length"), request.stream(),
                               self.cfg.predict_max_body_bytes)
        kind = request.headers.get("content-type", "")
        args = (body, kind, loaded.spec, self.cfg.predict_max_samples, request.query_params.get("site"),
                self.cfg.max_unzipped_bytes)
        # DICOM (or a large body) in a thread: a study takes a while to convert, and the replica keeps answering
        # meanwhile. An array is parsed here: the thread's hand-off cost more than the parse (measured: ~0.3 ms
        # of a 0.9 ms request for the small CNN), and the forward pass runs on this loop anyway.
        slow = "dicom" in kind or "zip" in kind or len(body) > _PARSE_INLINE_BYTES
        parsed = await asyncio.to_thread(parse_inputs, *args) if slow else parse_inputs(*args)
        x, site = parsed.x, parsed.site
        inputs = to_tensor(x)
        loaded, scores, chosen = await self._answer(name, loaded, inputs, site)
        probs, answered_site = scores.probabilities, site or scores.bn_site
        answer: dict[str, Any] = {"model": name, "version": loaded.version, **self._validation(loaded, answered_site)}
        threshold = self.thresholds.get(site) if site and loaded.spec.classes == 2 else None
        correct = expected_correct(probs, threshold)
        self._record(name, x, loaded.version, answered_site, correct)
        if chosen and site:
            self.canary.count(chosen, site, correct)
        self.mirror.offer(name, inputs, site, answered_site, probs, threshold)
        answer.update({"inputs": parsed.names, "probabilities": probs.round(6).tolist(),
                       "labels": probs.argmax(axis=1).tolist()})
        if scores.bn_site is not None:  # which site's BatchNorm answered, and whether MAP routing chose it
            answer["normalisation"] = {"site": scores.bn_site, "routed": scores.routed}
        answer["calibration"] = {"site": scores.temperature_site, "temperature": round(scores.temperature, 6)}
        if threshold is not None:
            answer["threshold"] = threshold
            answer["decisions"] = (probs[:, 1] >= threshold).astype(int).tolist()
        return JSONResponse(answer, headers={"X-Model-Version": str(loaded.version)})

    async def _answer(self, name: str, loaded: Loaded, inputs: torch.Tensor, site: str | None
                      ) -> tuple[Loaded, Scores, tuple[CanaryRun, Loaded] | None]:
        """Who answers and how: the model's canary for its share of a validated site's requests (serving/canary.py),
        else production (also for any request the canary failed on)."""
        chosen = self.canary.pick(name, site)
        scores = self.canary.answer(chosen, inputs, site) if chosen is not None and site is not None else None
        if scores is not None and chosen is not None:
            return chosen[1], scores, chosen
        job = Job(loaded, inputs, site)
        return loaded, await self._batched(job) if self.cfg.batch_max_requests > 1 else infer([job])[0], None

    @staticmethod
    def _validation(loaded: Loaded, site: str | None) -> dict[str, Any]:
        """Whether the version is validated at the site the request names (or, naming none, was routed to);
        under the `refuse` policy a site that is not is answered 409 with the reasons."""
        if site is None:
            return {}
        ready = loaded.readiness_of(site)
        if not ready.validated and loaded.rules.policy == "refuse":
            raise SiteNotValidated(f"model version {loaded.version} is not validated at site {site!r}: "
                                   + "; ".join(ready.reasons))
        answer = {"site": site, "validated": ready.validated}
        return {**answer, "not_validated": ready.reasons} if ready.reasons else answer

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batched(self, jobs: list[Job]) -> list[Scores]:
        """Concurrent requests share forward passes (sizes set from the config in __init__)."""
        return infer(jobs)

    def _record(self, name: str, x: np.ndarray, version: int, site: str | None, correct: np.ndarray) -> None:
        """Queue a sample of the inputs for the drift watch, and each answer's probability of being right at its
        site for the label-free accuracy estimate; a failure is logged, never the request's."""
        self._recorder.add(name, self.inputs.sample(x), version, site, correct)

    async def _current(self, name: str) -> Loaded:
        """The version answering `name`: held (503 until its first version is loaded), or opened through
        Serve's multiplexing, which routes requests naming a model to replicas holding it."""
        if self._open is not None:
            routed = serve.get_multiplexed_model_id()
            if routed and routed != name:
                raise BadRequest(f"the serve_multiplexed_model_id header names {routed!r}, ?model= names {name!r}")
            return (await self._open(name)).loaded
        slot = self.slots.get(name)
        if slot is None:
            self._known(name)
            raise NotReady(f"model {name!r} has no production version loaded yet")
        return slot.loaded

    def _known(self, name: str) -> Model:
        """The model's record; 404 for a model the registry does not know (503 stays for one not loaded yet)."""
        try:
            return self.registry.get_model(name)
        except NotFound as e:
            raise ModelNotFound(str(e)) from e

    def _model_name(self, requested: str | None) -> str:
        if requested is None and self._open is not None:  # Serve's routing header names it
            requested = serve.get_multiplexed_model_id() or None
        if requested is not None:
            return check_name(requested)
        if len(self.slots) == 1 and self._open is None:
            return next(iter(self.slots))
        raise BadRequest(f"name the model with ?model=NAME; serving {sorted(self.slots)}")

    def close(self) -> None:
        """Stop polling and recording (Serve drops the replica; tests and tools call it themselves)."""
        self._stop.set()
        self.mirror.close()
        self._recorder.close()
        try:
            self.replicas.forget(self.replica_id)
        except RegistryError as e:  # its beat ages out instead
            log.warning("replica %s not removed from the live list: %s", self.replica_id, e)

    def check_health(self) -> None:
        self.registry.ping()


def deployment(cfg: ServingConfig) -> serve.Deployment:
    """The ModelServer deployment with this configuration's replicas (fixed, or autoscaled by Serve between
    bounds on ongoing requests per replica) and concurrency."""
    scaling: dict[str, Any] = {"num_replicas": cfg.replicas}
    if cfg.autoscaling is not None:
        scaling = {"autoscaling_config": cfg.autoscaling.model_dump()}
    return serve.deployment(name="ModelServer", max_ongoing_requests=cfg.max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0, "num_gpus": cfg.replica_gpus}, **scaling)(ModelServer)

"""The weighted canary: a candidate answers a share of live requests, at the sites it is validated at, before it may
replace production; promoted or rolled back by its error rate and its label-free estimate.

    {p}:model:{m}:canary         JSON  CanaryRun while a candidate answers a share of requests; its start and end
                                       bump the serving generation, so replicas (which watch it) load or drop it
    {p}:model:{m}:v:{n}:canary   hash  "{site}:{counter}" -> what the candidate did on the requests it answered
                                       (requests, samples, errors, correct_sum: the answers' probability of being right)

Off by default (Model.canary None). For a model with a canary policy the order is: gate, shadow run, approval (an
`approval` model), canary, production. `begin` starts it (the pipeline for an `auto` model, the approvers' last
approval for an `approval` model) for the sites where the candidate is validated (judged on their locked sets where
they have one): requests naming another site, or none, are never answered by it; with no such site the candidate is
rolled back at once. Replicas answer `share` of those sites' requests with the candidate (a failure is counted and
production answers instead); the daemon's `clreg.canarying.judge` gives the verdict once `min_requests` were
answered: promoted when the error rate is within `max_error_rate` and, at every site, the label-free estimate is no
more than `max_estimate_drop` under the candidate's validated accuracy there; otherwise rolled back (rejected).
"""

from __future__ import annotations

from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.connection import Command, Write, translated
from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog
from clreg.registry.locked import overlaid
from clreg.registry.readiness import assess_sites
from clreg.registry.records import (
    BatchState,
    BatchStatus,
    CanaryPolicy,
    Model,
    ModelVersion,
    Name,
    Record,
    VersionStatus,
    check_name,
    now,
    parse,
)
from clreg.registry.store import RedisRegistry

_COUNTERS = ("requests", "samples", "errors", "correct_sum")


class CanaryRun(Record):
    model: Name
    version: int = Field(ge=1)
    policy: CanaryPolicy
    sites: list[Name]  # where it may answer: the sites it is validated at
    accuracy: dict[Name, float] = Field(default_factory=dict)  # its validated accuracy there, the estimate's yardstick
    approvers: list[str] = Field(default_factory=list)  # an approval model's: the move names them
    request: str | None = None
    started_at: float = Field(default_factory=now)


class CanaryCounts(BaseModel):
    """What a candidate did on the requests it answered (of one site, or all)."""

    model_config = ConfigDict(frozen=True)
    requests: int = 0
    samples: int = 0
    errors: int = 0  # requests it failed on (production answered them)
    correct_sum: float = 0.0  # each answer's probability of being right (the label-free estimate's numerator)

    @property
    def estimate(self) -> float | None:
        return self.correct_sum / self.samples if self.samples else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def __add__(self, other: CanaryCounts) -> CanaryCounts:
        return CanaryCounts(requests=self.requests + other.requests, samples=self.samples + other.samples,
                            errors=self.errors + other.errors, correct_sum=self.correct_sum + other.correct_sum)


class Canaries:
    def __init__(self, registry: RedisRegistry) -> None:
        self._reg = registry

    def _run_key(self, model: str) -> str:
        return self._reg.key("model", check_name(model), "canary")

    def _counts_key(self, model: str, version: int) -> str:
        return self._reg.key("model", check_name(model), "v", int(version), "canary")

    @translated
    def start(self, run: CanaryRun) -> bool:
        """Let `run.version` answer; False when it does already; Conflict while another version of the model does."""
        key, started = self._run_key(run.model), list[bool]()

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raw = pipe.get(key)
            if raw is not None:
                if parse(CanaryRun, raw).version != run.version:
                    raise Conflict(f"version {parse(CanaryRun, raw).version} of {run.model} is the canary already")
                started[:] = [False]
                return []
            pipe.multi()
            pipe.set(key, run.model_dump_json())
            started[:] = [True]
            return [Command("INCR", self._reg.key("serving", "generation"))]

        self._reg.writer.transaction(txn, key)
        return started[0]

    @translated
    def end(self, model: str, version: int) -> None:
        key = self._run_key(model)

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raw = pipe.get(key)
            if raw is None or parse(CanaryRun, raw).version != version:
                return []
            pipe.multi()
            pipe.delete(key)
            return [Command("INCR", self._reg.key("serving", "generation"))]

        self._reg.writer.transaction(txn, key)

    @translated
    def active(self, model: str) -> CanaryRun | None:
        raw = self._reg.r.get(self._run_key(model))
        return None if raw is None else parse(CanaryRun, raw)

    @translated
    def active_all(self, models: list[str]) -> dict[str, CanaryRun]:
        """Every canary among `models`, in one pipelined round trip (what replicas read)."""
        pipe = self._reg.r.pipeline(transaction=False)
        for model in models:
            pipe.get(self._run_key(model))
        return {m: parse(CanaryRun, raw) for m, raw in zip(models, pipe.execute(), strict=True) if raw is not None}

    @translated
    def record(self, counts: dict[tuple[str, int, str], CanaryCounts]) -> None:
        """Add replicas' counts ((model, version, site) -> counts) in one round trip."""
        pipe = self._reg.r.pipeline(transaction=False)
        for (model, version, site), c in counts.items():
            key, field = self._counts_key(model, version), check_name(site)
            for name in _COUNTERS[:3]:
                pipe.hincrby(key, f"{field}:{name}", getattr(c, name))
            pipe.hincrbyfloat(key, f"{field}:correct_sum", c.correct_sum)
        pipe.execute()

    @translated
    def figures(self, model: str, version: int) -> dict[str, CanaryCounts]:
        """Site -> what the candidate did there (requests it answered)."""
        sites: dict[str, dict[str, float]] = {}
        for field, value in self._reg.r.hgetall(self._counts_key(model, version)).items():
            site, _, counter = field.rpartition(":")
            if counter in _COUNTERS:
                sites.setdefault(site, {})[counter] = float(value)
        return {s: CanaryCounts(requests=int(c.get("requests", 0)), samples=int(c.get("samples", 0)),
                                errors=int(c.get("errors", 0)), correct_sum=c.get("correct_sum", 0.0))
                for s, c in sorted(sites.items())}


def begin(registry: RedisRegistry, events: EventLog, artifacts: ArtifactStore, model: Model, candidate: ModelVersion,
          approvers: list[str] | None = None, request: str | None = None) -> bool:
    """For a model with a canary policy, let the candidate answer a share of its validated sites' requests (its
    batches wait in `canary`): True then, or when no site is validated and it was rolled back; False without a
    policy (the caller promotes)."""
    policy = model.canary
    if policy is None:
        return False
    calibration = overlaid(registry, version_calibration(artifacts, candidate), model.name, candidate.number)
    ready = assess_sites(calibration, model.readiness, model.task_metric)
    sites = sorted(s for s, r in ready.items() if r.validated)
    if not sites:
        roll_back(registry, events, candidate, "the candidate is validated at no site: no request may be answered by "
                                               "it, so the canary cannot run")
        return True
    accuracy = {s: calibration.sites[s].accuracy or 0.0 for s in sites} if calibration else {}
    run = CanaryRun(model=model.name, version=candidate.number, policy=policy, sites=sites, accuracy=accuracy,
                    approvers=approvers or [], request=request)
    if Canaries(registry).start(run):
        events.append(model.name, "canary.started", version=candidate.number, sites=sites, share=policy.share,
                      min_requests=policy.min_requests)
    set_states(registry, candidate, BatchStatus.CANARY, f"answers {policy.share:.0%} of the requests of "
               f"{', '.join(sites)} until {policy.min_requests} requests, then promoted or rolled back")
    return True


def roll_back(registry: RedisRegistry, events: EventLog, candidate: ModelVersion, reason: str,
              figures: dict[str, Any] | None = None) -> None:
    """The candidate rejected with the reason, its batches rejected, the canary ended (each step safe to repeat)."""
    try:
        registry.set_status(candidate.model, candidate.number, VersionStatus.REJECTED)
    except Conflict:  # it holds an alias (promoted meanwhile by an admin): its status stays what serving needs
        pass
    events.append(candidate.model, "canary.failed", version=candidate.number, reasons=[reason], figures=figures or {})
    set_states(registry, candidate, BatchStatus.REJECTED, f"canary rolled back: {reason}")
    registry.batches.clear_pending(candidate.model, candidate.lineage.batch_ids)
    Canaries(registry).end(candidate.model, candidate.number)


def set_states(registry: RedisRegistry, version: ModelVersion, status: BatchStatus, detail: str) -> None:
    for batch_id in version.lineage.batch_ids:
        previous = registry.batches.state(batch_id)
        registry.batches.set_state(batch_id, BatchState(status=status, version=version.number, detail=detail,
                                                        drift_report_id=previous.drift_report_id,
                                                        updates=previous.updates))

"""How the pipeline is doing, for `clreg status`, GET /v1/status and /metrics: which daemons live, which
batches are stuck, which candidates were abandoned by a process that died."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.daemons import Daemons, Heartbeat
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import BatchStatus, VersionStatus, now
from clreg.registry.store import RedisRegistry


class StuckRule(BaseModel):
    """When a batch counts as stuck: unchanged for `after_s`, or `waiting_after_s` while it waits (by design)
    in the pending set for more samples (drift_checked), for live traffic to judge its candidate (shadowing) or for
    the model's approvers (awaiting_approval)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    after_s: float = Field(default=900.0, gt=0)
    waiting_after_s: float = Field(default=4500.0, gt=0)


class DaemonLine(BaseModel):
    heartbeat: Heartbeat
    alive: bool
    seconds_since_beat: float


class StuckBatch(BaseModel):
    batch_id: str
    status: BatchStatus
    seconds: float  # since its state last changed
    detail: str


class AbandonedVersion(BaseModel):
    model: str
    version: int
    reason: str


class WaitingBatch(BaseModel):
    """A batch whose update was rejected, waiting in the pending set to join the model's next update."""

    model: str
    site: str
    batch_id: str
    updates: int  # rejected updates it was in
    detail: str


class SiteLearning(BaseModel):
    """Whether a site that pushed data for a model is learnt by its production version."""

    model: str
    site: str
    learnt: bool
    batches: int
    waiting: int  # of its batches, how many wait after a rejected update


class PipelineStatus(BaseModel):
    daemons: list[DaemonLine]
    stuck: list[StuckBatch]
    abandoned: list[AbandonedVersion]
    backlog: int  # ingest entries delivered but not acked, plus entries not yet delivered
    rule: StuckRule
    waiting: list[WaitingBatch] = Field(default_factory=list)
    not_learnt: list[SiteLearning] = Field(default_factory=list)  # sites with data that production has not learnt


def waiting_batches(registry: RedisRegistry, model: str) -> list[WaitingBatch]:
    """The model's batches waiting after a rejected update (its pending set, WAITING ones), oldest first."""
    ids = registry.batches.pending(model)
    states = {i: registry.batches.state(i) for i in ids}
    out = [(registry.batches.get(i), st) for i, st in states.items() if st.status is BatchStatus.WAITING]
    return [WaitingBatch(model=model, site=b.site, batch_id=b.id, updates=st.updates, detail=st.detail)
            for b, st in sorted(out, key=lambda bs: bs[0].created_at)]


def site_learning(registry: RedisRegistry, model: str) -> list[SiteLearning]:
    """Every site that pushed data for the model, and whether its production version learnt it."""
    number = registry.resolve(model)
    learnt = set(registry.get_version(model, number).lineage.sites) if number is not None else set()
    counts = registry.batches.site_counts(model, registry.list_sites())
    waiting = Counter(w.site for w in waiting_batches(registry, model))
    return [SiteLearning(model=model, site=site, learnt=site in learnt, batches=c.batches, waiting=waiting[site])
            for site, c in sorted(counts.items())]


def pipeline_status(registry: RedisRegistry, rule: StuckRule) -> PipelineStatus:
    at = now()
    daemons = [DaemonLine(heartbeat=b, alive=alive, seconds_since_beat=round(at - b.at, 1))
               for b, alive in Daemons(registry).listing()]
    stuck = []
    for batch_id, state in registry.batches.active(min(rule.after_s, rule.waiting_after_s)):
        if state.status is BatchStatus.WAITING:  # waits for another batch by design: listed under `waiting`
            continue
        waiting = state.status in (BatchStatus.DRIFT_CHECKED, BatchStatus.SHADOWING, BatchStatus.AWAITING_APPROVAL)
        limit = rule.waiting_after_s if waiting else rule.after_s
        if at - state.updated_at >= limit:
            stuck.append(StuckBatch(batch_id=batch_id, status=state.status, seconds=round(at - state.updated_at, 1),
                                    detail=state.detail))
    reasons = {(e.model, e.data.get("version")): str(e.data.get("reason", ""))
               for e in EventLog(registry).alerts(kind="update.abandoned", count=100_000)}
    abandoned = [AbandonedVersion(model=m, version=v.version.number, reason=reasons.get((m, v.version.number), ""))
                 for m in registry.list_models() for v in registry.list_versions(m, VersionStatus.ABANDONED)]
    models = registry.list_models()
    return PipelineStatus(daemons=daemons, stuck=stuck, abandoned=abandoned, backlog=IngestQueue(registry).backlog(),
                          rule=rule, waiting=[w for m in models for w in waiting_batches(registry, m)],
                          not_learnt=[s for m in models for s in site_learning(registry, m) if not s.learnt])

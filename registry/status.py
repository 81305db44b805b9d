"""How the pipeline is doing, for `clreg status`, GET /v1/status and /metrics: which daemons live, which
batches are stuck, which candidates were abandoned by a process that died."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.daemons import Daemons
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import BatchStatus, Heartbeat, VersionStatus, now
from clreg.registry.store import RedisRegistry


class StuckRule(BaseModel):
    """When a batch counts as stuck: unchanged for `after_s`, or `waiting_after_s` while it waits (by design)
    in the pending set for more samples (drift_checked) or for live traffic to judge its candidate (shadowing)."""

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


class PipelineStatus(BaseModel):
    daemons: list[DaemonLine]
    stuck: list[StuckBatch]
    abandoned: list[AbandonedVersion]
    backlog: int  # ingest entries delivered but not acked, plus entries not yet delivered
    rule: StuckRule


def pipeline_status(registry: RedisRegistry, rule: StuckRule) -> PipelineStatus:
    at = now()
    daemons = [DaemonLine(heartbeat=b, alive=alive, seconds_since_beat=round(at - b.at, 1))
               for b, alive in Daemons(registry).listing()]
    stuck = []
    for batch_id, state in registry.batches.active(min(rule.after_s, rule.waiting_after_s)):
        waiting = state.status in (BatchStatus.DRIFT_CHECKED, BatchStatus.SHADOWING)
        limit = rule.waiting_after_s if waiting else rule.after_s
        if at - state.updated_at >= limit:
            stuck.append(StuckBatch(batch_id=batch_id, status=state.status, seconds=round(at - state.updated_at, 1),
                                    detail=state.detail))
    reasons = {(e.model, e.data.get("version")): str(e.data.get("reason", ""))
               for e in EventLog(registry).alerts(kind="update.abandoned", count=100_000)}
    abandoned = [AbandonedVersion(model=m, version=v.version.number, reason=reasons.get((m, v.version.number), ""))
                 for m in registry.list_models() for v in registry.list_versions(m, VersionStatus.ABANDONED)]
    return PipelineStatus(daemons=daemons, stuck=stuck, abandoned=abandoned, backlog=IngestQueue(registry).backlog(),
                          rule=rule)

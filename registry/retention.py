"""Retention: archive old candidate and rejected versions and prune the artifacts nothing kept still uses.

A version is kept (never archived) while it is one of the newest `keep_last`, younger than `min_age_s`,
holds an alias, or appears (as from or to) in the last `protect_promotions` changes of any alias, so a
rollback target always survives. Archiving changes only the status: the record stays, so lineage and
audit still read, and an archived version can never be promoted again.

Artifacts are content-addressed and shared (two versions may hold the same bytes), so a digest is deleted
only when no kept version, batch or drift report of any model references it. A run holds every model's
update lease: no update can register a version, or write a blob an archived version also holds, meanwhile.
A model whose update is running is skipped, and then no artifact is pruned in that run.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog
from clreg.registry.leases import Lease
from clreg.registry.records import AliasChange, Incarnation, VersionStatus, VersionView
from clreg.registry.store import RedisRegistry

ARCHIVABLE = frozenset({VersionStatus.CANDIDATE, VersionStatus.BLESSED, VersionStatus.REJECTED})
CLOSED = frozenset({VersionStatus.ARCHIVED, VersionStatus.ABANDONED})  # their artifacts may be pruned


class RetentionConfig(BaseModel):
    """Which versions retention may archive, and whether it deletes their artifacts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    keep_last: int = Field(default=20, ge=1)  # the newest versions are never archived
    protect_promotions: int = Field(default=10, ge=0)  # versions in each alias's last N changes are kept
    min_age_s: float = Field(default=7 * 86400.0, ge=0)  # a candidate being gated right now is never touched
    statuses: frozenset[VersionStatus] = frozenset({VersionStatus.CANDIDATE, VersionStatus.REJECTED})
    prune_artifacts: bool = True
    lease_s: float = Field(default=300.0, gt=0)

    @field_validator("statuses")
    @classmethod
    def _archivable(cls, value: frozenset[VersionStatus]) -> frozenset[VersionStatus]:
        if not value <= ARCHIVABLE:
            raise ValueError(f"retention can archive only {sorted(s.value for s in ARCHIVABLE)}")
        return value


class RetentionReport(BaseModel):
    """What one run did: versions archived per model, artifacts deleted, models skipped (update running)."""

    model_config = ConfigDict(frozen=True)
    archived: dict[str, list[int]] = Field(default_factory=dict)
    pruned: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)


def select(views: list[VersionView], history: list[AliasChange], cfg: RetentionConfig, at: float) -> list[int]:
    """The version numbers the policy archives, given the versions and the protected alias changes."""
    ordered = sorted(views, key=lambda v: v.version.number)
    newest = {v.version.number for v in ordered[-cfg.keep_last:]}
    promoted = {c.to_version for c in history} | {c.from_version for c in history if c.from_version is not None}
    return [v.version.number for v in ordered
            if v.status in cfg.statuses and not v.aliases and v.version.number not in newest | promoted
            and at - v.version.created_at >= cfg.min_age_s]


class Retention:
    """Applies a RetentionConfig to every model of a registry and its artifact store."""

    def __init__(self, registry: RedisRegistry, artifacts: ArtifactStore, cfg: RetentionConfig,
                 holder: Incarnation | None = None) -> None:
        self.registry = registry
        self.artifacts = artifacts
        self.cfg = cfg
        self.events = EventLog(registry)
        self.holder = holder  # who holds the update leases during a run (None: this process as a tool)

    def run(self, at: float | None = None) -> RetentionReport:
        """One pass over all models; `at` is the clock for `min_age_s` (now by default)."""
        at = time.time() if at is None else at
        held: dict[str, Lease] = {}
        skipped: list[str] = []
        try:
            for model in self.registry.list_models():
                lease = Lease(self.registry, model, self.holder, lease_s=self.cfg.lease_s)
                if lease.acquire():
                    held[model] = lease
                else:
                    skipped.append(model)
            archived = {model: self._archive(model, at) for model in held}
            pruned = self._prune() if self.cfg.prune_artifacts and not skipped else []
        finally:
            for lease in held.values():
                lease.release()
        return RetentionReport(archived=archived, pruned=pruned, skipped=skipped)

    def protected_changes(self, model: str) -> list[AliasChange]:
        """The last `protect_promotions` changes of each of the model's aliases."""
        n = self.cfg.protect_promotions
        if n == 0:
            return []
        return [c for alias in self.registry.aliases(model) for c in self.registry.alias_history(model, alias)[-n:]]

    def _archive(self, model: str, at: float) -> list[int]:
        plan = select(self.registry.list_versions(model), self.protected_changes(model), self.cfg, at)
        done: list[int] = []
        for number in plan:
            try:
                self.registry.set_status(model, number, VersionStatus.ARCHIVED, expect=self.cfg.statuses)
            except Conflict:  # promoted or re-gated since the plan was made: it stays
                continue
            done.append(number)
        if done:
            self.events.append(model, "retention.archived", versions=done)
        return done

    def _prune(self) -> list[str]:
        """Delete the artifacts of archived versions that nothing kept references; returns what was deleted."""
        kept: set[str] = set()
        archived: set[str] = set()
        for model in self.registry.list_models():
            for view in self.registry.list_versions(model):
                (archived if view.status in CLOSED else kept).update(view.version.artifacts.values())
            for batch in self.registry.batches.of_model(model):
                kept.update(d for d in (batch.artifact, batch.source_artifact) if d)
            kept.update(r.html_artifact for r in self.registry.reports.drift(model, limit=1_000_000) if r.html_artifact)
        pruned = [digest for digest in sorted(archived - kept) if self.artifacts.exists(digest)]
        for digest in pruned:
            self.artifacts.delete(digest)
        return pruned

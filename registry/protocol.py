"""The modification protocol: what every update of a model is judged by, as a versioned, audited record.

    {p}:model:{m}:protocol     list  Protocol JSON, revision 1 first (revision k at index k-1)

A protocol revision holds the model's task metric, readiness rules, approval policy, shadow policy and retry
policy (from its record), the gate's tolerances and the candidate search the daemon runs with (its settings), and
the locked test sets (site -> digest and batches). Nothing changes a part without a new revision, written with its
event (`protocol.changed`: who, why, which parts) in one transaction:
- the model's creation writes revision 1 (the gate and search are the daemon's: empty until its first update);
- `PUT /v1/models/{m}/protocol` (admin) changes the approval policy or the readiness rules, the model record with
  its revision;
- the daemon, before it registers a version, writes a revision when its gate or search settings differ from the
  current one (`who`: the daemon), and stamps the version with the revision it was made under (Lineage.protocol);
- a locked batch admitted to a site's set writes a revision with the set's new digest (`who`: the site).
A version made under an older revision says so (`GET /v1/models/{m}/versions/{n}`: `protocol`).
"""

from __future__ import annotations

from typing import Any

import redis
from pydantic import Field

from clreg.registry.connection import Write, translated
from clreg.registry.events import EventLog
from clreg.registry.records import (
    ApprovalPolicy,
    BatchId,
    CanaryPolicy,
    Digest,
    Metric,
    Model,
    Name,
    Readiness,
    Record,
    RetryPolicy,
    ShadowPolicy,
    check_name,
    now,
    parse,
)
from clreg.registry.store import RedisRegistry

PARTS = ("metric", "readiness", "approval", "shadow", "canary", "retry", "gate", "search", "locked")


class LockedSet(Record):
    """A site's locked test set as the protocol fixes it."""

    digest: Digest
    batch_ids: list[BatchId]


class Protocol(Record):
    """One revision of a model's modification protocol."""

    model: Name
    revision: int = Field(ge=1)
    metric: Metric
    readiness: Readiness
    approval: ApprovalPolicy
    shadow: ShadowPolicy | None = None
    canary: CanaryPolicy | None = None
    retry: RetryPolicy = RetryPolicy()
    gate: dict[str, Any] = Field(default_factory=dict)  # the daemon's gate settings (tolerances, confidence, ...)
    search: dict[str, Any] = Field(default_factory=dict)  # the daemon's candidate search settings
    locked: dict[Name, LockedSet] = Field(default_factory=dict)
    who: str = Field(min_length=1, max_length=120)
    reason: str = Field(min_length=1, max_length=500)
    changed: list[str] = Field(default_factory=list)  # the parts that differ from the previous revision
    at: float = Field(default_factory=now)

    def parts(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(PARTS))


def record_parts(model: Model) -> dict[str, Any]:
    """The parts of a protocol its model's record holds."""
    return {"metric": model.task_metric, "readiness": model.readiness.model_dump(mode="json"),
            "approval": model.approval.model_dump(mode="json"),
            "shadow": model.shadow.model_dump(mode="json") if model.shadow else None,
            "canary": model.canary.model_dump(mode="json") if model.canary else None,
            "retry": model.retry.model_dump(mode="json")}


class Protocols:
    """The protocol revisions of every model."""

    def __init__(self, registry: RedisRegistry, events: EventLog) -> None:
        self._reg = registry
        self._events = events

    def _key(self, model: str) -> str:
        return self._reg.key("model", check_name(model), "protocol")

    @translated
    def all(self, model: str) -> list[Protocol]:
        return [parse(Protocol, raw) for raw in self._reg.r.lrange(self._key(model), 0, -1)]

    @translated
    def current(self, model: str) -> Protocol | None:
        raw = self._reg.r.lindex(self._key(model), -1)
        return None if raw is None else parse(Protocol, raw)

    def get(self, model: str, revision: int) -> Protocol | None:
        found = self._reg.r.lindex(self._key(model), int(revision) - 1) if revision >= 1 else None
        return None if found is None else parse(Protocol, found)

    @translated
    def revise(self, model: Model, who: str, reason: str, *, record: bool = False, **parts: Any) -> Protocol:
        """The protocol with `parts` (and the record's parts, from `model`) as given and the rest as they are: a new
        revision when anything differs (with `record`, `model` is stored as the model's record in the same
        transaction), else the current one."""
        key, model_key = self._key(model.name), self._reg.key("model", model.name)
        out: list[Protocol] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raws = pipe.lrange(key, -1, -1)
            current = parse(Protocol, raws[0]) if raws else None
            wanted = {**(current.parts() if current else {}), **record_parts(model), **parts}
            changed = [p for p in PARTS if current is None or current.parts().get(p) != wanted.get(p)]
            if current is not None and not changed:
                out[:] = [current]
                return []
            proto = Protocol.model_validate({**wanted, "model": model.name, "who": who, "reason": reason,
                                             "revision": current.revision + 1 if current else 1, "changed": changed})
            pipe.multi()
            pipe.rpush(key, proto.model_dump_json())
            if record:
                pipe.set(model_key, model.model_dump_json())
            out[:] = [proto]
            return list(self._events.entries(model.name, "protocol.changed", revision=proto.revision, who=who,
                                             reason=reason, changed=changed))

        self._reg.writer.transaction(txn, key, model_key)
        return out[0]


def standing(protocols: Protocols, model: str, revision: int | None) -> dict[str, Any]:
    """How a version's protocol revision stands against the current one (what a version made under an older
    protocol says): the revisions, and the parts changed since."""
    current = protocols.current(model)
    newer = [p for p in protocols.all(model) if revision is not None and p.revision > revision]
    return {"revision": revision, "current": current.revision if current else None,
            "older": bool(newer), "changed_since": sorted({c for p in newer for c in p.changed})}

"""Approval requests: a move of an `approval` model's production alias waits for its approvers.

    {p}:model:{m}:approvals    hash  request id -> ApprovalRequest JSON, decisions included (kept for good)

Two ways a request is made, each named by its `kind`:
- `gate`: the pipeline blessed a version of an approval model (clreg/approving.py). The version waits as
  `awaiting_approval` (never served meanwhile), its batches as `awaiting_approval`, and the model's next update waits
  for the verdict. Its id is `r-<version>-gate`, so a replayed pipeline step finds the request it made.
- `manual`: someone asked to move production (POST /v1/models/{m}/aliases/production, `clreg promote`, `clreg
  rollback`, the console). For an approval model that move is not made: it becomes a request (answer 202) named
  by its requester, the admin or an approver, and the version keeps its status.

Approvers decide (approve or decline, each with a reason). The requester may not decide its own request, and an
approver decides a request once. One decline declines it; `needs` distinct approvals (the policy's `approvers`
when it was made) approve it, and then production moves through promotion.promote with the approvers' names. A
declined gate request declines its version for good (`declined`, never served) and rejects its batches.

Every request and decision is one transaction: the request record, a line in the alias history
(AliasChange.action requested/approved/declined) and its event (approval.requested/approved/declined, which
webhooks deliver). What follows a decision (the move, the version's status, the batches' states) is written after;
`settle` finishes a decided request whose consequences a dead process left half written.
"""

from __future__ import annotations

import secrets
from typing import Literal

import redis
from pydantic import Field

from clreg.registry import canary, promotion
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.connection import Write, translated
from clreg.registry.errors import Conflict, NotFound, NotPermitted
from clreg.registry.events import EventLog
from clreg.registry.records import (
    NEVER_SERVED,
    SERVABLE,
    AliasChange,
    BatchState,
    BatchStatus,
    Name,
    Record,
    VersionStatus,
    check_name,
    now,
    parse,
)
from clreg.registry.store import RedisRegistry

Verdict = Literal["approve", "decline"]


class Decision(Record):
    approver: Name
    verdict: Verdict
    reason: str = Field(min_length=1, max_length=500)
    at: float = Field(default_factory=now)


class ApprovalRequest(Record):
    """A move of production that waits for approvers, with every decision made on it."""

    id: str = Field(pattern=r"^r-[0-9]{1,16}-[0-9a-z]{1,16}$")
    model: Name
    version: int = Field(ge=1)
    kind: Literal["gate", "manual"]
    requester: str = Field(min_length=1, max_length=80)  # "daemon", "admin", or "approver:<name>"
    reason: str = Field(min_length=1, max_length=500)
    needs: int = Field(ge=1, le=5)  # distinct approvals that approve it
    force: bool = False  # a manual request for a version that did not pass its gates
    from_version: int | None = None  # production when it was made
    decisions: list[Decision] = Field(default_factory=list)
    status: Literal["waiting", "approved", "declined"] = "waiting"
    settled: bool = False  # what its verdict entails is written (the move; a declined version, its batches)
    note: str = Field(default="", max_length=1000)  # why an approved move could not be made (settled without it)
    created_at: float = Field(default_factory=now)
    decided_at: float | None = None

    @property
    def approvers(self) -> list[str]:
        return [d.approver for d in self.decisions if d.verdict == "approve"]


class Approvals:
    """The approval requests of every model."""

    def __init__(self, registry: RedisRegistry, events: EventLog) -> None:
        self._reg = registry
        self._events = events

    def _key(self, model: str) -> str:
        return self._reg.key("model", check_name(model), "approvals")

    @translated
    def all(self, model: str) -> list[ApprovalRequest]:
        """Every request of a model, oldest first."""
        raw = self._reg.r.hgetall(self._key(model))
        return sorted((parse(ApprovalRequest, v) for v in raw.values()), key=lambda r: (r.created_at, r.id))

    def waiting(self, model: str, version: int | None = None) -> list[ApprovalRequest]:
        return [r for r in self.all(model) if r.status == "waiting" and version in (None, r.version)]

    def get(self, model: str, request_id: str) -> ApprovalRequest:
        found = next((r for r in self.all(model) if r.id == request_id), None)
        if found is None:
            raise NotFound(f"model {model!r} has no approval request {request_id!r}")
        return found

    @translated
    def open(self, request: ApprovalRequest) -> ApprovalRequest:
        """Store a new request with its history line and event (a gate request also marks its version
        awaiting_approval); the stored one when a request of that id exists (a replayed step)."""
        key, status_key = self._key(request.model), self._reg.key("model", request.model, "status")
        stored: list[ApprovalRequest] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raw = pipe.hget(key, request.id)
            if raw is not None:
                stored[:] = [parse(ApprovalRequest, raw)]
                return []
            current = pipe.hget(status_key, request.version)
            pipe.multi()
            pipe.hset(key, request.id, request.model_dump_json())
            if request.kind == "gate" and current == VersionStatus.BLESSED.value:
                pipe.hset(status_key, request.version, VersionStatus.AWAITING_APPROVAL.value)
            stored[:] = [request]
            return self._audit(request, "requested", request.requester, request.reason)

        self._reg.writer.transaction(txn, key, status_key, acknowledge=True)
        return stored[0]

    @translated
    def decide(self, model: str, version: int, approver: str, verdict: Verdict, reason: str) -> ApprovalRequest:
        """Record one approver's decision on the request waiting for `version`; the request as it is after it.

        Raises:
            NotFound: no request waits for that version. NotPermitted: the approver requested it. Conflict: the
            approver decided it already.
        """
        key, decided = self._key(model), list[ApprovalRequest]()
        decision = Decision(approver=check_name(approver), verdict=verdict, reason=reason)

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            found = [parse(ApprovalRequest, v) for v in pipe.hvals(key)]
            request = next((r for r in found if r.status == "waiting" and r.version == version), None)
            if request is None:
                raise NotFound(f"no approval request waits for version {version} of {model!r}")
            _check_decider(request, decision.approver)
            after = _with(request, decision)
            pipe.multi()
            pipe.hset(key, after.id, after.model_dump_json())
            decided[:] = [after]
            return self._audit(after, "approved" if verdict == "approve" else "declined", decision.approver, reason,
                               verdict=verdict, approvals=len(after.approvers), status=after.status)

        self._reg.writer.transaction(txn, key, acknowledge=True)
        return decided[0]

    def mark_settled(self, request: ApprovalRequest) -> ApprovalRequest:
        """Note that what the request's verdict entails is written (settle's last step)."""
        done = request.model_copy(update={"settled": True})
        self._reg.r.hset(self._key(request.model), request.id, done.model_dump_json())
        return done

    def _audit(self, request: ApprovalRequest, action: Literal["requested", "approved", "declined"], who: str,
               reason: str, **data: object) -> list[Write]:
        """The alias-history line and the event of one step of a request."""
        line = AliasChange(model=request.model, alias="production", from_version=request.from_version,
                           to_version=request.version, who=who if action == "requested" else f"approver:{who}",
                           reason=reason, action=action, approvers=request.approvers, request=request.id)
        event = self._events.entries(request.model, f"approval.{action}", request=request.id,
                                     version=request.version, request_kind=request.kind, requester=request.requester,
                                     who=line.who, reason=reason, needs=request.needs, **data)
        return [self._reg.alias_line(line), *event]


def _check_decider(request: ApprovalRequest, approver: str) -> None:
    if request.requester == f"approver:{approver}":
        raise NotPermitted(f"approver {approver!r} requested this move (request {request.id}); another approver must "
                       "decide it")
    if any(d.approver == approver for d in request.decisions):
        raise Conflict(f"approver {approver!r} has decided request {request.id} already")


def _with(request: ApprovalRequest, decision: Decision) -> ApprovalRequest:
    """The request with one more decision, and its verdict once it has one."""
    decisions = [*request.decisions, decision]
    approvals = len({d.approver for d in decisions if d.verdict == "approve"})
    status = "declined" if decision.verdict == "decline" else "approved" if approvals >= request.needs else "waiting"
    return request.model_copy(update={"decisions": decisions, "status": status,
                                      "decided_at": decision.at if status != "waiting" else None})


def request_move(registry: RedisRegistry, events: EventLog, model: str, version: int, *, who: str, reason: str,
                 force: bool = False) -> ApprovalRequest:
    """A manual move of an approval model's production, made a request (its status checked as promote would).

    Raises:
        NotFound: no such version. Conflict: a version that may not serve, or (without `force`) one that has not
        passed its gates, or one a request already waits for.
    """
    record = registry.get_model(model)
    status = registry.status(model, version)
    if status in NEVER_SERVED:
        raise Conflict(f"version {version} is {status.value} and can never be served")
    if registry.resolve(model) == version:
        raise Conflict(f"version {version} holds production already")
    waiting = Approvals(registry, events).waiting(model, version)
    if waiting:
        raise Conflict(f"request {waiting[0].id} waits for approvers to decide version {version} already")
    if status not in SERVABLE and not force:
        raise Conflict(f"version {version} is {status.value}: it has not passed the gates "
                       "(send \"force\": true to ask for a candidate anyway)")
    request = ApprovalRequest(id=f"r-{version}-{secrets.token_hex(4)}", model=model, version=version, kind="manual",
                              requester=who, reason=reason, needs=record.approval.approvers, force=force,
                              from_version=registry.resolve(model))
    return Approvals(registry, events).open(request)


def settle(registry: RedisRegistry, events: EventLog, request: ApprovalRequest,
           artifacts: ArtifactStore | None = None) -> ApprovalRequest:
    """Write what a decided request entails, each step safe to repeat: approved, production moves (unless it holds
    the version already) and a gate request's batches are promoted; a declined gate request declines its version
    and rejects its batches. A waiting or settled request is returned as it is."""
    if request.status == "waiting" or request.settled:
        return request
    if request.status == "approved" and _canary(registry, events, request, artifacts):
        pass  # the canary answers a share of requests first (registry/canary.py); its verdict moves production
    elif request.status == "approved":
        try:
            if registry.resolve(request.model) != request.version:
                promotion.promote(registry, events, request.model, request.version, who=request.requester,
                                  reason=_reasons(request), force=request.force, artifacts=artifacts,
                                  approvers=request.approvers, request=request.id)
        except Conflict as e:  # the version may no longer serve (archived, declined by hand meanwhile): kept, said
            _batches(registry, request, BatchStatus.REJECTED, f"approved, but not moved: {e}")
            return Approvals(registry, events).mark_settled(request.model_copy(update={"note": str(e)[:1000]}))
        _batches(registry, request, BatchStatus.PROMOTED, f"approved by {', '.join(request.approvers)}")
    elif request.kind == "gate":
        _decline_version(registry, request)
        decline = next(d for d in request.decisions if d.verdict == "decline")
        _batches(registry, request, BatchStatus.REJECTED,
                 f"version {request.version} declined by approver {decline.approver}: {decline.reason}")
    return Approvals(registry, events).mark_settled(request)


def _canary(registry: RedisRegistry, events: EventLog, request: ApprovalRequest,
            artifacts: ArtifactStore | None) -> bool:
    """For an approved gate request of a model with a canary policy: the version blessed and its canary begun."""
    model = registry.get_model(request.model)
    if request.kind != "gate" or model.canary is None or artifacts is None:
        return False
    if registry.status(request.model, request.version) is VersionStatus.AWAITING_APPROVAL:
        registry.set_status(request.model, request.version, VersionStatus.BLESSED,
                            expect=frozenset({VersionStatus.AWAITING_APPROVAL}))
    return canary.begin(registry, events, artifacts, model, registry.get_version(request.model, request.version),
                        approvers=request.approvers, request=request.id)


def _reasons(request: ApprovalRequest) -> str:
    """The move's reason in the alias history: the request's, then each approver's."""
    said = "; ".join(f"{d.approver}: {d.reason}" for d in request.decisions if d.verdict == "approve")
    return f"{request.reason} (approved: {said})"[:2000]


def _decline_version(registry: RedisRegistry, request: ApprovalRequest) -> None:
    status = registry.status(request.model, request.version)
    if status in (VersionStatus.AWAITING_APPROVAL, VersionStatus.BLESSED):
        try:
            registry.set_status(request.model, request.version, VersionStatus.DECLINED,
                                expect=frozenset({VersionStatus.AWAITING_APPROVAL, VersionStatus.BLESSED}))
        except Conflict:  # it holds an alias after all (moved meanwhile): its status stays what serving needs
            return


def _batches(registry: RedisRegistry, request: ApprovalRequest, status: BatchStatus, detail: str) -> None:
    """A gate request's batches (its version's own) in their final state, out of the pending set."""
    if request.kind != "gate":
        return
    ids = registry.get_version(request.model, request.version).lineage.batch_ids
    for batch_id in ids:
        previous = registry.batches.state(batch_id)
        registry.batches.set_state(batch_id, BatchState(status=status, version=request.version, detail=detail,
                                                        drift_report_id=previous.drift_report_id,
                                                        updates=previous.updates))
    registry.batches.clear_pending(request.model, ids)

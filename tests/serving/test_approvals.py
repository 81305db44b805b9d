"""Approvals on the real gateway app and a real Redis (no Ray): an `approval` model keeps a blessed version out of
production until an approver approves it; the requester cannot approve its own request; two-approver mode needs two
names; declines are kept with their reasons and a declined version is never served; every decision is an event, a
line in the alias history and a webhook delivery; approver tokens are stored hashed and can be revoked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clreg import approving
from clreg.context import Stores
from clreg.dispatch import Dispatcher
from clreg.registry.approvals import Approvals
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import token_sha256
from clreg.registry.events import EventLog
from clreg.registry.records import (
    ApprovalPolicy,
    Batch,
    BatchStatus,
    Lineage,
    Model,
    ModelVersion,
    VersionStatus,
)
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.registry.webhooks import WebhookConfig, WebhookStore, new_subscription
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
M = "appr"


@dataclass
class Setup:
    registry: RedisRegistry
    stores: Stores
    http: TestClient

    def call(self, method: str, path: str, token: str, **kwargs: object) -> tuple[int, dict]:
        answer = self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        return answer.status_code, answer.json()

    def approver(self, name: str) -> str:
        status, body = self.call("POST", "/v1/approvers", "admin", json={"name": name})
        assert status == 201, body
        return str(body["token"])

    def version(self, blessed: bool = True, batches: int = 1) -> ModelVersion:
        """A version learnt from new batches of site s1 (stored records, no arrays), blessed by default."""
        n = len(self.registry.list_versions(M)) + 1
        ids = [f"{n:032x}{i:032x}" for i in range(batches)]
        for batch_id in ids:
            self.registry.batches.add(Batch(id=batch_id, model=M, site="s1", samples=4, class_counts=[2, 2, 0],
                                            train_index=[0, 1], heldout_index=[2, 3], artifact="0" * 64))
            self.registry.batches.add_pending(M, batch_id)
        version = self.registry.register_version(ModelVersion(model=M, number=1, lineage=Lineage(
            parent=self.registry.resolve(M), batch_ids=ids, sites=["s1"])))
        if blessed:
            self.registry.set_status(M, version.number, VersionStatus.BLESSED)
        return version


@pytest.fixture
def setup(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> Iterator[Setup]:
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), admin_token_sha256=token_sha256("admin"),
                        ops_token_sha256=token_sha256("ops"))
    stores = Stores(registry=registry, artifacts=ArtifactStore(str(tmp_path)), events=EventLog(registry))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1") as http:
        yield Setup(registry, stores, http)


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, "the page has no form"
    return found.group(1)


def _model(setup: Setup, mode: str = "approval", approvers: int = 1) -> Model:
    status, body = setup.call("POST", "/v1/models", "admin", json={
        "name": M, "input": {"channels": 1, "height": 8, "width": 8, "classes": 3},
        "approval": {"mode": mode, "approvers": approvers}})
    assert status == 201, body
    return setup.registry.get_model(M)


def test_a_blessed_version_waits_unserved_until_an_approver_approves(setup: Setup) -> None:
    model = _model(setup)
    assert model.approval == ApprovalPolicy(mode="approval", approvers=1)
    alice = setup.approver("alice")
    v1 = setup.version()
    assert approving.waits(setup.stores, model, v1, "passed gate g-appr-1")
    assert approving.waits(setup.stores, model, v1, "passed gate g-appr-1")  # a replayed step: the same request
    reg = setup.registry
    assert reg.resolve(M) is None and reg.status(M, 1) is VersionStatus.AWAITING_APPROVAL
    assert approving.blocking(setup.stores, M)  # the model's next update waits for the verdict
    state = reg.batches.state(v1.lineage.batch_ids[0])
    assert state.status is BatchStatus.AWAITING_APPROVAL and "waits for 1 approver" in state.detail
    status, versions = setup.call("GET", f"/v1/models/{M}/versions", "ops")
    assert [v["status"] for v in versions] == ["awaiting_approval"]
    status, refused = setup.call("POST", f"/v1/models/{M}/versions/1/approve", "admin", json={"reason": "me"})
    assert status == 403 and refused["error"] == "forbidden"  # the admin is no approver
    status, waiting = setup.call("GET", "/v1/approvals", "ops")
    assert [(r["id"], r["kind"], r["requester"], r["status"]) for r in waiting] == [
        ("r-1-gate", "gate", "daemon", "waiting")]

    status, done = setup.call("POST", f"/v1/models/{M}/versions/1/approve", alice, json={"reason": "figures fine"})
    assert status == 200, done
    assert (done["status"], done["approvers"], done["settled"]) == ("approved", ["alice"], True)
    assert reg.resolve(M) == 1 and reg.status(M, 1) is VersionStatus.PRODUCTION
    assert reg.batches.state(v1.lineage.batch_ids[0]).status is BatchStatus.PROMOTED and reg.batches.pending(M) == []
    assert not approving.blocking(setup.stores, M)
    status, aliases = setup.call("GET", f"/v1/models/{M}/aliases", "ops")
    [move] = aliases["history"]
    assert (move["to_version"], move["who"], move["approvers"], move["request"]) == (1, "daemon", ["alice"],
                                                                                    "r-1-gate")
    assert "alice: figures fine" in move["reason"]
    assert [(c["action"], c["who"]) for c in aliases["log"]] == [
        ("requested", "daemon"), ("approved", "approver:alice"), ("moved", "daemon")]
    kinds = [e.kind for e in setup.stores.events.read(M)]
    assert kinds == ["protocol.changed", "approval.requested", "approval.approved", "alias.moved"]
    moved = setup.stores.events.read(M)[-1]
    assert (moved.data["approvers"], moved.data["request"]) == (["alice"], "r-1-gate")


def test_the_requester_cannot_approve_its_own_request(setup: Setup) -> None:
    _model(setup)
    alice, bob = setup.approver("alice"), setup.approver("bob")
    setup.registry.promote(M, setup.version().number, who="test", reason="first")
    setup.version()
    status, asked = setup.call("POST", f"/v1/models/{M}/aliases/production", alice, json={"version": 2,
                                                                                          "reason": "newer"})
    assert status == 202, asked
    assert (asked["status"], asked["request"]["requester"], asked["request"]["kind"]) == (
        "awaiting_approval", "approver:alice", "manual")
    assert setup.registry.resolve(M) == 1  # asked, not moved
    status, same = setup.call("POST", f"/v1/models/{M}/aliases/production", "admin", json={"version": 1,
                                                                                           "reason": "no-op"})
    assert status == 409 and "holds production already" in same["detail"]
    status, again = setup.call("POST", f"/v1/models/{M}/aliases/production", "admin", json={"version": 2,
                                                                                            "reason": "twice"})
    assert status == 409 and "waits for approvers" in again["detail"]
    status, own = setup.call("POST", f"/v1/models/{M}/versions/2/approve", alice, json={"reason": "mine"})
    assert status == 403 and "another approver must decide it" in own["detail"]
    status, ops = setup.call("POST", f"/v1/models/{M}/versions/2/approve", "ops", json={"reason": "x"})
    assert status == 403
    status, done = setup.call("POST", f"/v1/models/{M}/versions/2/approve", bob, json={"reason": "agreed"})
    assert status == 200 and done["approvers"] == ["bob"] and setup.registry.resolve(M) == 2
    assert setup.registry.status(M, 1) is VersionStatus.BLESSED  # a manual request keeps the versions' statuses

    status, back = setup.call("POST", f"/v1/models/{M}/aliases/production", "admin", json={"version": 1,
                                                                                           "reason": "roll back"})
    assert status == 202 and back["request"]["requester"] == "admin" and setup.registry.resolve(M) == 2
    status, done = setup.call("POST", f"/v1/models/{M}/versions/1/approve", alice, json={"reason": "ok"})
    assert status == 200 and setup.registry.resolve(M) == 1


def test_two_approver_mode_needs_two_names(setup: Setup) -> None:
    model = _model(setup, approvers=2)
    alice, bob = setup.approver("alice"), setup.approver("bob")
    approving.waits(setup.stores, model, setup.version(), "passed gate g")
    status, first = setup.call("POST", f"/v1/models/{M}/versions/1/approve", alice, json={"reason": "one"})
    assert status == 200 and (first["status"], first["approvers"]) == ("waiting", ["alice"])
    assert setup.registry.resolve(M) is None
    status, twice = setup.call("POST", f"/v1/models/{M}/versions/1/approve", alice, json={"reason": "again"})
    assert status == 409 and "decided request r-1-gate already" in twice["detail"]
    status, second = setup.call("POST", f"/v1/models/{M}/versions/1/approve", bob, json={"reason": "two"})
    assert status == 200 and (second["status"], second["approvers"]) == ("approved", ["alice", "bob"])
    assert setup.registry.resolve(M) == 1
    assert setup.registry.alias_history(M)[-1].approvers == ["alice", "bob"]


def test_a_decline_is_kept_with_its_reason_and_the_version_is_never_served(setup: Setup) -> None:
    model = _model(setup)
    bob = setup.approver("bob")
    v1 = setup.version()
    approving.waits(setup.stores, model, v1, "passed gate g")
    status, done = setup.call("POST", f"/v1/models/{M}/versions/1/decline", bob,
                              json={"reason": "locked-set sensitivity too low"})
    assert status == 200 and done["status"] == "declined"
    reg = setup.registry
    assert reg.status(M, 1) is VersionStatus.DECLINED and reg.resolve(M) is None
    state = reg.batches.state(v1.lineage.batch_ids[0])
    assert state.status is BatchStatus.REJECTED and "declined by approver bob: locked-set sensitivity" in state.detail
    status, forced = setup.call("POST", "/v1/models/appr/aliases/production", "admin",
                                json={"version": 1, "reason": "anyway", "force": True})
    assert status == 409 and "can never be served" in forced["detail"]
    [kept] = Approvals(reg, setup.stores.events).all(M)
    assert [(d.approver, d.verdict, d.reason) for d in kept.decisions] == [
        ("bob", "decline", "locked-set sensitivity too low")]
    [line] = [c for c in reg.alias_history(M, moves_only=False) if c.action == "declined"]
    assert (line.who, line.reason, line.to_version) == ("approver:bob", "locked-set sensitivity too low", 1)
    assert not approving.blocking(setup.stores, M)


def test_an_auto_model_moves_at_once_and_approvers_may_not_move_it(setup: Setup) -> None:
    _model(setup, mode="auto")
    alice = setup.approver("alice")
    setup.version()
    status, refused = setup.call("POST", f"/v1/models/{M}/aliases/production", alice, json={"version": 1,
                                                                                            "reason": "x"})
    assert status == 403 and "admin token" in refused["detail"]
    status, moved = setup.call("POST", f"/v1/models/{M}/aliases/production", "admin", json={"version": 1,
                                                                                            "reason": "pin"})
    assert status == 200 and (moved["to_version"], moved["who"], moved["action"]) == (1, "admin", "moved")


def test_approver_tokens_are_shown_once_stored_hashed_and_revocable(setup: Setup) -> None:
    _model(setup)
    token = setup.approver("carol")
    raw = setup.registry.r.hget(setup.registry.key("approvers"), "carol")
    assert token not in raw and token_sha256(token) in raw
    status, listed = setup.call("GET", "/v1/approvers", "ops")
    assert listed == [{"name": "carol", "created_at": listed[0]["created_at"], "schema_version": 1}]
    assert setup.call("POST", "/v1/approvers", "admin", json={"name": "carol"})[0] == 409
    assert setup.call("POST", "/v1/approvers", "admin", json={"name": "Not A Name"})[0] == 422
    assert setup.call("POST", "/v1/approvers", "ops", json={"name": "dave"})[0] == 403
    assert setup.call("GET", f"/v1/models/{M}/approvals", token)[0] == 200  # approvers read
    assert setup.call("DELETE", "/v1/approvers/carol", "admin")[0] == 200
    assert setup.call("GET", f"/v1/models/{M}/approvals", token)[0] == 401


def test_webhooks_deliver_every_decision(setup: Setup, hook: Hook) -> None:
    model = _model(setup, approvers=2)
    alice, bob = setup.approver("alice"), setup.approver("bob")
    kinds = ["approval.requested", "approval.approved", "approval.declined", "alias.moved"]
    WebhookStore(setup.registry).add(new_subscription(url(hook), kinds, M))
    approving.waits(setup.stores, model, setup.version(), "passed gate g")
    setup.call("POST", f"/v1/models/{M}/versions/1/approve", alice, json={"reason": "one"})
    setup.call("POST", f"/v1/models/{M}/versions/1/approve", bob, json={"reason": "two"})
    approving.waits(setup.stores, model, setup.version(), "passed gate g2")
    setup.call("POST", f"/v1/models/{M}/versions/2/decline", bob, json={"reason": "no"})
    dispatcher = Dispatcher(setup.registry, WebhookConfig(allow=("127.0.0.1",)))
    dispatcher.fan_out()
    while dispatcher.deliver():  # sent in parallel: compared in the order they were recorded
        pass
    got = sorted((b["event"]["id"], b["event"]["kind"], b["event"]["data"].get("who")) for b in hook.bodies)
    assert [g[1:] for g in got] == [("approval.requested", "daemon"), ("approval.approved", "approver:alice"),
                   ("approval.approved", "approver:bob"), ("alias.moved", "daemon"),
                   ("approval.requested", "daemon"), ("approval.declined", "approver:bob")]


def test_the_console_page_takes_an_approvers_decision_with_its_session_and_csrf(setup: Setup) -> None:
    model = _model(setup)
    alice = setup.approver("alice")
    approving.waits(setup.stores, model, setup.version(), "passed gate g")
    http = setup.http
    assert http.post("/ui/login", data={"token": alice}, follow_redirects=False).status_code == 303
    page = http.get("/ui/approvals")
    assert page.status_code == 200 and 'data-request="r-1-gate"' in page.text and "Approve" in page.text
    csrf = _csrf(page.text)
    forged = http.post(f"/ui/approvals/{M}/1", data={"verdict": "approve", "reason": "x"}, follow_redirects=False)
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert setup.registry.resolve(M) is None
    done = http.post(f"/ui/approvals/{M}/1", data={"verdict": "approve", "reason": "looks right", "csrf": csrf},
                     follow_redirects=False)
    assert done.status_code == 303 and setup.registry.resolve(M) == 1
    assert "alice approved: looks right" in http.get("/ui/approvals").text
    http.post("/ui/logout")
    http.post("/ui/login", data={"token": "admin"})
    admin_csrf = _csrf(http.get("/ui/models/appr").text)
    refused = http.post(f"/ui/approvals/{M}/1", data={"verdict": "decline", "reason": "x", "csrf": admin_csrf})
    assert refused.status_code == 403 and "approver" in refused.text


def test_a_shadowed_candidate_of_an_approval_model_waits_for_approvers_after_its_shadow_run(setup: Setup) -> None:
    from clreg import shadowing
    from clreg.registry.leases import tool
    from clreg.registry.records import ShadowPolicy
    from clreg.registry.shadow import ShadowCounts, ShadowRun, Shadows

    _model(setup)
    policy = ShadowPolicy(share=0.5, min_requests=10, min_agreement=0.5)
    model = setup.registry.get_model(M).model_copy(update={"shadow": policy})
    setup.registry.r.set(setup.registry.key("model", M), model.model_dump_json())
    alice = setup.approver("alice")
    setup.registry.promote(M, setup.version().number, who="test", reason="first")
    v2 = setup.version()
    shadows = Shadows(setup.registry)
    shadows.start(ShadowRun(model=M, version=2, policy=policy))
    shadows.record({(M, 2, "s1"): ShadowCounts(requests=10, samples=10, agreed=9, confidence_sum=9.0)})
    assert shadowing.judge(setup.stores, tool(), 10.0) == [(M, 2, "awaiting_approval")]
    reg = setup.registry
    assert reg.resolve(M) == 1 and reg.status(M, 2) is VersionStatus.AWAITING_APPROVAL and shadows.active(M) is None
    assert reg.batches.state(v2.lineage.batch_ids[0]).status is BatchStatus.AWAITING_APPROVAL
    [request] = Approvals(reg, setup.stores.events).waiting(M)
    assert request.reason.startswith("shadow agreement 90.0%")
    setup.call("POST", f"/v1/models/{M}/versions/2/approve", alice, json={"reason": "shadow fine"})
    assert reg.resolve(M) == 2 and reg.batches.state(v2.lineage.batch_ids[0]).status is BatchStatus.PROMOTED


def test_an_approved_move_that_can_no_longer_be_made_is_settled_with_the_reason(setup: Setup) -> None:
    _model(setup)
    alice = setup.approver("alice")
    setup.registry.promote(M, setup.version().number, who="test", reason="first")
    setup.version()
    assert setup.call("POST", f"/v1/models/{M}/aliases/production", "admin", json={"version": 2,
                                                                                  "reason": "newer"})[0] == 202
    setup.registry.set_status(M, 2, VersionStatus.ARCHIVED)  # retention, meanwhile
    status, done = setup.call("POST", f"/v1/models/{M}/versions/2/approve", alice, json={"reason": "ok"})
    assert status == 200 and done["settled"] and "version 2 is archived" in done["note"]
    assert setup.registry.resolve(M) == 1 and not approving.blocking(setup.stores, M)

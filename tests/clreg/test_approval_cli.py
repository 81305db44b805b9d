"""`clreg approvers add`, `clreg approvals`, `clreg approve|decline` and `clreg promote` of an approval model,
against the gateway app served by uvicorn (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from clreg.cli import app
from clreg.registry.records import ApprovalPolicy, InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry
from tests.clreg.test_models_create import gateway  # noqa: F401 (the fixture is used by name)


def test_the_admin_asks_and_approvers_decide_from_the_cli(gateway: Path, registry: RedisRegistry) -> None:
    registry.create_model(Model(name="cli", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3),
                                approval=ApprovalPolicy(mode="approval", approvers=2)))
    for _ in range(2):
        n = registry.register_version(ModelVersion(model="cli", number=1, lineage=Lineage())).number
        registry.set_status("cli", n, VersionStatus.BLESSED)
    run = CliRunner().invoke
    tokens = {}
    for name in ("alice", "bob"):
        added = run(app, ["approvers", "add", name, "--json"])
        assert added.exit_code == 0, added.output
        tokens[name] = json.loads(added.output)["token"]
    listed = run(app, ["approvers", "list", "--json"])
    assert [a["name"] for a in json.loads(listed.output)] == ["alice", "bob"] and "token" not in listed.output

    asked = run(app, ["promote", "cli", "2", "--reason", "the newer one"])
    assert asked.exit_code == 0 and "waits for 2 approver(s)" in asked.output, asked.output
    assert registry.resolve("cli") is None
    waiting = json.loads(run(app, ["approvals", "cli", "--json"]).output)
    assert [(r["version"], r["requester"], r["status"]) for r in waiting] == [(2, "admin", "waiting")]
    first = run(app, ["approve", "cli", "2", "--reason", "ok", "--token", tokens["alice"]])
    assert first.exit_code == 0 and "is waiting (approvals: alice; needs 2)" in first.output, first.output
    second = run(app, ["approve", "cli", "2", "--reason", "ok too"], env={"CLREG_APPROVER_TOKEN": tokens["bob"]})
    assert second.exit_code == 0 and "is approved" in second.output, second.output
    assert registry.resolve("cli") == 2

    run(app, ["promote", "cli", "1", "--reason", "back"])
    declined = run(app, ["decline", "cli", "1", "--reason", "no need", "--token", tokens["bob"]])
    assert declined.exit_code == 0 and "is declined" in declined.output
    assert registry.resolve("cli") == 2 and registry.status("cli", 1) is VersionStatus.BLESSED  # manual: kept
    every = json.loads(run(app, ["approvals", "--all", "--json"]).output)
    assert [r["status"] for r in every] == ["approved", "declined"]
    denied = run(app, ["approve", "cli", "1", "--reason", "x", "--token", "not-a-token"])
    assert denied.exit_code != 0


def test_the_protocol_is_shown_and_its_approval_policy_changed_from_the_cli(gateway: Path,
                                                                           registry: RedisRegistry) -> None:
    run = CliRunner().invoke
    assert run(app, ["models", "create", "proto", "--input", "1,8,8", "--classes", "3"]).exit_code == 0
    changed = run(app, ["protocol", "set", "proto", "--approval", "approval", "--approvers", "2", "--reason", "pilot"])
    assert changed.exit_code == 0 and "protocol revision 2 (approval)" in changed.output, changed.output
    shown = json.loads(run(app, ["protocol", "show", "proto", "--json"]).output)
    assert [(p["revision"], p["who"], p["reason"]) for p in shown["revisions"]] == [
        (1, "admin", "model created"), (2, "admin", "pilot")]
    assert registry.get_model("proto").approval == ApprovalPolicy(mode="approval", approvers=2)

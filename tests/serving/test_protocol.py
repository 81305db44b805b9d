"""The modification protocol as a versioned record (no Ray): revision 1 at the model's creation; an admin's change
of the approval policy or readiness rules is a new revision with its event and who; the daemon records its gate and
search settings before the first version it makes, and stamps each version with the revision in force; a locked
set fixes its digest there; a version made under an older revision says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clreg import context, protocols
from clreg.registry.batches import token_sha256
from clreg.registry.protocol import Protocols
from clreg.registry.records import Lineage, ModelVersion
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from clreg.settings import GateConfig, RedisSettings, Settings

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


def test_every_change_of_the_protocol_is_a_revision_with_who_and_why(registry: RedisRegistry, store_cfg: StoreConfig,
                                                                    tmp_path: Path) -> None:
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path / "a"), admin_token_sha256=token_sha256("admin"),
                        ops_token_sha256=token_sha256("ops"))
    http = TestClient(create_app(cfg), base_url="http://127.0.0.1")
    admin, ops = ({"Authorization": f"Bearer {t}"} for t in ("admin", "ops"))
    created = http.post("/v1/models", headers=admin, json={
        "name": "pro", "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}})
    assert created.status_code == 201, created.text
    first = http.get("/v1/models/pro/protocol", headers=ops).json()["current"]
    assert (first["revision"], first["who"], first["reason"], first["metric"]) == (1, "admin", "model created", "auroc")
    assert first["approval"] == {"mode": "auto", "approvers": 1, "schema_version": 1} and first["gate"] == {}

    assert http.put("/v1/models/pro/protocol", headers=ops, json={"reason": "x", "approval": {}}).status_code == 403
    assert http.put("/v1/models/pro/protocol", headers=admin, json={"reason": "nothing"}).status_code == 400
    changed = http.put("/v1/models/pro/protocol", headers=admin, json={
        "approval": {"mode": "approval", "approvers": 2}, "reason": "deployed at two hospitals"})
    assert changed.status_code == 200, changed.text
    second = changed.json()
    assert (second["revision"], second["changed"], second["who"]) == (2, ["approval"], "admin")
    assert registry.get_model("pro").approval.approvers == 2  # the record changed with its revision

    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        gate=GateConfig(tolerance=0.03))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    model = registry.get_model("pro")
    stamped = protocols.stamp(ctx, model, ModelVersion(model="pro", number=1, lineage=Lineage()))
    assert stamped.lineage.protocol == 3  # the daemon's settings, recorded first
    third = Protocols(registry, ctx.events).current("pro")
    assert third is not None and third.changed == ["gate", "search"] and third.gate["tolerance"] == 0.03
    assert third.who == "daemon"
    assert protocols.stamp(ctx, model, stamped).lineage.protocol == 3  # the same settings: no new revision
    number = registry.register_version(stamped).number
    version = http.get(f"/v1/models/pro/versions/{number}", headers=ops).json()
    assert version["protocol"] == {"revision": 3, "current": 3, "older": False, "changed_since": []}

    http.put("/v1/models/pro/protocol", headers=admin, json={"readiness": {"accuracy_floor": 0.9},
                                                             "reason": "stricter after review"})
    version = http.get(f"/v1/models/pro/versions/{number}", headers=ops).json()
    assert version["protocol"] == {"revision": 3, "current": 4, "older": True, "changed_since": ["readiness"]}
    kinds = [(e.kind, e.data.get("who")) for e in ctx.events.read("pro") if e.kind == "protocol.changed"]
    assert kinds == [("protocol.changed", "admin")] * 2 + [("protocol.changed", "daemon"),
                                                          ("protocol.changed", "admin")]
    listed = http.get("/v1/models/pro/protocol", headers=ops).json()
    assert [r["revision"] for r in listed["revisions"]] == [1, 2, 3, 4] and listed["current"]["revision"] == 4

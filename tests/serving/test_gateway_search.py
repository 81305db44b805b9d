"""GET /v1/models/{name}/versions filters (status, site, parent, since, until) on the real gateway app."""

from __future__ import annotations

from pathlib import Path

import pytest

from clreg.registry.batches import token_sha256
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app

T0 = 1_700_000_000.0


# starlette's TestClient warns that it wants httpx2; the app under test is the same either way
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_version_filters_over_http(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    for i, (parent, sites) in enumerate([(None, ["a"]), (1, ["a", "b"]), (1, ["a", "c"])]):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage(parent=parent, sites=sites),
                                               created_at=T0 + i))
    registry.set_status("m", 3, VersionStatus.REJECTED)
    registry.promote("m", 2, who="ops", reason="ok")
    from fastapi.testclient import TestClient

    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), ops_token_sha256=token_sha256("ops"))
    client = TestClient(create_app(cfg), base_url="http://127.0.0.1", headers={"Authorization": "Bearer ops"})

    def numbers(**params: object) -> list[int]:
        answer = client.get("/v1/models/m/versions", params=params)
        assert answer.status_code == 200, answer.text
        return [v["version"]["number"] for v in answer.json()]

    assert numbers() == [1, 2, 3]
    assert numbers(status="rejected") == [3]
    assert numbers(site="b") == [2]
    assert numbers(parent=1) == [2, 3]
    assert numbers(since=T0 + 1, until=T0 + 2) == [2]
    assert client.get("/v1/models/m/versions", params={"site": "b"}).json()[0]["aliases"] == ["production"]
    bad = client.get("/v1/models/m/versions", params={"site": "../x"})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid")
    assert client.get("/v1/models/m/versions", params={"parent": 0}).status_code == 422

"""Initial weights through the artifact store, on the real gateway app and a real Redis: a checkpoint uploaded
with POST /v1/artifacts, adapted to the network when a model names it, refused (naming keys) when it does not fit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from clreg.learner.models import load_weights, network_for
from clreg.learner.zoo import resnet18
from clreg.registry.artifacts import ArtifactStore, sha256
from clreg.registry.batches import token_sha256
from clreg.registry.records import Model
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
ADMIN, OPS = "admin-token", "ops-token"
LIMIT = 64 * 1024 * 1024  # the upload limit in these tests; one is set lower to test the refusal


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    """A resnet18 state dict shaped as torchvision's ImageNet file (RGB stem, 1000 classes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: spinning OpenMP threads slow these nets many times over
    torch.manual_seed(3)
    state = resnet18(3, 224, 224, 1000).state_dict()
    torch.set_num_threads(threads)
    return state


@pytest.fixture(scope="module")
def pth(checkpoint: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    return buf.getvalue()


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def _app(store_cfg: StoreConfig, artifacts_dir: Path, limit: int = LIMIT) -> TestClient:
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(artifacts_dir), admin_token_sha256=token_sha256(ADMIN),
                        ops_token_sha256=token_sha256(OPS), max_weights_bytes=limit)
    from fastapi.testclient import TestClient  # imported here: starlette warns at import that it wants httpx2

    return TestClient(create_app(cfg), base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {ADMIN}"})


@pytest.fixture
def client(registry: RedisRegistry, store_cfg: StoreConfig, artifacts_dir: Path) -> Iterator[TestClient]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _app(store_cfg, artifacts_dir)
    torch.set_num_threads(threads)


def _upload(client: TestClient, data: bytes, **headers: str) -> tuple[int, dict]:
    answer = client.post("/v1/artifacts", content=data,
                         headers={"Content-Type": "application/octet-stream", **headers})
    return answer.status_code, answer.json()


def _model(name: str, factory: str = "resnet18", **extra: object) -> dict:
    return {"name": name, "factory": f"clreg.learner.models:{factory}",
            "input": {"channels": 1, "height": 32, "width": 32, "classes": 2}, **extra}


def _files(artifacts_dir: Path) -> set[str]:
    return {p.name for p in artifacts_dir.rglob("*") if p.is_file()}


def test_upload_then_create_records_both_digests_and_weights_that_load_strictly(
        client: TestClient, registry: RedisRegistry, artifacts_dir: Path, checkpoint: dict, pth: bytes) -> None:
    status, uploaded = _upload(client, pth)
    assert (status, uploaded) == (201, {"sha256": sha256(pth), "bytes": len(pth)})
    assert _upload(client, pth) == (201, uploaded)  # the same bytes again: the same digest, stored once
    answer = client.post("/v1/models", json=_model("chest", weights=uploaded["sha256"]))
    assert answer.status_code == 201, answer.text
    record = registry.get_model("chest")
    assert record.weights_source == uploaded["sha256"] and record.weights == answer.json()["weights"]
    assert record.weights != record.weights_source
    assert (record.normalisation.mean, record.normalisation.std) == ([0.449], [0.226])  # ImageNet's grey
    adapted = ArtifactStore(str(artifacts_dir)).get(record.weights)
    load_weights(network_for(record), adapted)  # strict: exactly the network's keys and shapes
    state = st_load(adapted)
    assert torch.equal(state["conv1.weight"], checkpoint["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["layer2.0.downsample.1.running_mean"], checkpoint["layer2.0.downsample.1.running_mean"])
    assert state["fc.weight"].shape == (2, 512)
    assert _files(artifacts_dir) == {record.weights, record.weights_source}


def test_a_given_normalisation_is_kept_and_a_safetensors_file_gives_the_same_weights(
        client: TestClient, registry: RedisRegistry, checkpoint: dict, pth: bytes) -> None:
    _, from_pth = _upload(client, pth)
    _, from_st = _upload(client, st_save(checkpoint))
    norm = {"mean": [0.5], "std": [0.25]}
    assert client.post("/v1/models", json=_model("a", weights=from_pth["sha256"])).status_code == 201
    assert client.post("/v1/models", json=_model("b", weights=from_st["sha256"], normalisation=norm)).status_code == 201
    a, b = registry.get_model("a"), registry.get_model("b")
    assert a.weights == b.weights and a.weights_source != b.weights_source
    assert b.normalisation is not None and (b.normalisation.mean, b.normalisation.std) == ([0.5], [0.25])
    plain = client.post("/v1/models", json=_model("plain"))
    assert plain.status_code == 201 and plain.json()["normalisation"] is None and plain.json()["weights"] is None


def test_a_checkpoint_that_does_not_fit_is_422_naming_keys_and_nothing_is_registered(
        client: TestClient, registry: RedisRegistry, artifacts_dir: Path, pth: bytes) -> None:
    _, uploaded = _upload(client, pth)
    before = _files(artifacts_dir)
    answer = client.post("/v1/models", json=_model("dense", "densenet121", weights=uploaded["sha256"]))
    body = answer.json()
    assert (answer.status_code, body["error"]) == (422, "unprocessable")
    assert "missing 604: features.conv0.weight" in body["detail"] and "unexpected 122: bn1.bias" in body["detail"]
    _, junk = _upload(client, b"not a checkpoint at all")
    answer = client.post("/v1/models", json=_model("junk", weights=junk["sha256"]))
    assert answer.status_code == 422 and "neither safetensors nor a torch file" in answer.json()["detail"]
    assert registry.list_models() == [] and _files(artifacts_dir) == before | {junk["sha256"]}


def test_unknown_or_malformed_digests_and_unfit_normalisations_are_refused(
        client: TestClient, registry: RedisRegistry) -> None:
    unknown = client.post("/v1/models", json=_model("m", weights="0" * 64))
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    assert "POST /v1/artifacts" in unknown.json()["detail"]
    malformed = client.post("/v1/models", json=_model("m", weights="../../etc/passwd"))
    assert (malformed.status_code, malformed.json()["error"]) == (422, "invalid")
    rgb = client.post("/v1/models", json=_model("m", normalisation={"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}))
    assert (rgb.status_code, rgb.json()["error"]) == (422, "unprocessable")
    assert "for each of the 1 channels" in rgb.json()["detail"]
    assert registry.list_models() == []


def test_uploads_need_the_admin_token_the_right_type_and_size(
        registry: RedisRegistry, store_cfg: StoreConfig, artifacts_dir: Path) -> None:
    client = _app(store_cfg, artifacts_dir, limit=4096)
    for token, status in ((None, 401), (OPS, 403), ("someone", 403)):
        answer = client.post("/v1/artifacts", content=b"x" * 100,
                             headers={"Content-Type": "application/octet-stream",
                                      "Authorization": f"Bearer {token}" if token else ""})
        assert answer.status_code == status and answer.json()["error"] in ("unauthorized", "forbidden")
    ops_create = client.post("/v1/models", json=_model("m"), headers={"Authorization": f"Bearer {OPS}"})
    assert ops_create.status_code == 403
    status, body = _upload(client, b"x" * 4097)
    assert (status, body["error"]) == (413, "payload_too_large") and "4,096" in body["detail"]
    wrong_type = client.post("/v1/artifacts", content=b"x" * 10, headers={"Content-Type": "application/json"})
    assert (wrong_type.status_code, wrong_type.json()["error"]) == (415, "unsupported_media_type")
    assert _upload(client, b"x" * 4096)[0] == 201
    assert _files(artifacts_dir) == {sha256(b"x" * 4096)} and registry.list_models() == []


def test_the_model_record_round_trips_its_weights(registry: RedisRegistry, client: TestClient, pth: bytes) -> None:
    _, uploaded = _upload(client, pth)
    created = client.post("/v1/models", json=_model("rt", weights=uploaded["sha256"])).json()
    listed = {m["name"]: m for m in client.get("/v1/models").json()}
    assert listed["rt"]["weights"] == created["weights"] and listed["rt"]["weights_source"] == uploaded["sha256"]
    assert Model.model_validate(created).normalisation == registry.get_model("rt").normalisation
    duplicate = client.post("/v1/models", json=_model("rt", weights=uploaded["sha256"]))
    assert (duplicate.status_code, duplicate.json()["error"]) == (409, "conflict")

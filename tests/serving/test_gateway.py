"""The HTTP surface through the real Serve proxy: auth, refusals that leave nothing behind, predict errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    c = Client(stack.url, stack.admin_token)
    c.wait_ready()
    c.create_model("gw", "clreg.learner.models:small_cnn", (1, 8, 8), classes=3)
    return c


@pytest.fixture(scope="module")
def token(client: Client) -> str:
    return client.add_site("gw-site")["token"]


def _raw(x: np.ndarray | None = None, y: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in (("x", x), ("y", y)) if v is not None})
    return buf.getvalue()


def _state(stack: Stack) -> tuple[set, set]:
    import redis

    # event streams are left out: replicas append serving.swapped events on their own schedule
    keys = {k for k in redis.Redis.from_url(stack.redis_url).keys("*") if b":events:" not in k}
    files = {p for p in Path(stack.settings.artifacts()).rglob("*") if p.is_file()}
    return keys, files


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (b"PK\x03\x04 not really", 400, "malformed_batch", "npz"),
        (_raw(np.zeros((4, 9, 8), np.uint8), np.zeros(4, int)), 422, "batch_mismatch", "shape"),
        (_raw(np.full((4, 8, 8), np.nan, np.float32), np.zeros(4, int)), 422, "batch_mismatch", "NaN"),
        (_raw(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 5])), 422, "batch_mismatch", "outside 0..2"),
    ],
)
def test_malformed_batches_get_4xx_and_leave_nothing(stack: Stack, client: Client, token: str, body: bytes,
                                                     status: int, code: str, words: str) -> None:
    before = _state(stack)
    with pytest.raises(ApiError) as err:
        client.push("gw-site", token, body, "gw")
    assert (err.value.status, err.value.code) == (status, code) and words in err.value.detail
    assert _state(stack) == before


def test_tokens_are_scoped_and_content_type_checked(stack: Stack, client: Client, token: str) -> None:
    good = npz_bytes(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 0]))
    other = client.add_site("gw-other")["token"]
    for site, tok, status in (("gw-site", None, 401), ("gw-site", other, 403), ("nobody", token, 401)):
        with pytest.raises(ApiError) as err:
            client.push(site, tok, good, "gw")
        assert err.value.status == status
    r = httpx.post(f"{stack.url}/v1/sites/gw-site/batches", params={"model": "gw"}, content=good,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    with pytest.raises(ApiError) as err:
        Client(stack.url, admin_token=token).promote("gw", 1, "not an admin")
    assert err.value.status == 403


def test_duplicate_push_answers_200_with_the_same_id(client: Client, token: str) -> None:
    body = npz_bytes(np.full((6, 8, 8), 7, np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    first = client.push("gw-site", token, body, "gw")
    second = client.push("gw-site", token, body, "gw")
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert first["batch_id"] == second["batch_id"]
    site = next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")
    assert "token_sha256" not in site
    assert site["models"] == {"gw": {"batches": 1, "samples": 6, "class_counts": [2, 2, 2],
                                     "prevalence": pytest.approx([1 / 3] * 3),
                                     "validated": None}}  # no production version yet: no verdict


def test_predict_refuses_until_a_version_is_served(stack: Stack, client: Client) -> None:
    r = httpx.post(f"{stack.url}/v1/predict", params={"model": "gw"}, json={"inputs": np.zeros((1, 8, 8)).tolist()})
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    assert httpx.get(f"{stack.url}/metrics").status_code == 401  # monitoring needs the ops (or admin) token
    r = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.ops_token}"})
    assert r.status_code == 200 and "clreg_ingest_backlog" in r.text
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}


def test_cli_lists_sites_with_their_prevalence(stack: Stack, client: Client, token: str) -> None:
    from typer.testing import CliRunner

    from clreg.cli import app

    def counts() -> list[int]:
        site = next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")
        return site["models"].get("gw", {}).get("class_counts", [0, 0, 0])

    before = counts()
    client.push("gw-site", token, npz_bytes(np.full((8, 8, 8), 3, np.uint8), np.array([0, 0, 0, 0, 0, 2, 2, 1])), "gw")
    after = [a + b for a, b in zip(before, [5, 1, 2], strict=True)]
    assert counts() == after
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port),
           "COLUMNS": "240"}  # other tests' long site names must not squeeze the column under test
    table = CliRunner().invoke(app, ["sites", "list"], env=env)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "gw-site" in line)
    shares = " ".join(f"{k}:{n / sum(after):.2f}" for k, n in enumerate(after))
    assert f" {sum(after)} " in row and shares in row
    listed = json.loads(CliRunner().invoke(app, ["sites", "list", "--json"], env=env).output)
    assert next(s for s in listed if s["name"] == "gw-site")["models"]["gw"]["class_counts"] == after


SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05]
LABELS = [1, 1, 0, 1, 0, 1, 0, 0, 0, 0]


def _serve_version(stack: Stack, name: str, classes: int, binary_scores: bool) -> int:
    """A production version whose calibration artifact holds gw-site's held-out scores (binary) or none."""
    from clreg.learner.models import small_cnn, weights_to_bytes
    from clreg.registry.artifacts import ArtifactStore
    from clreg.registry.findings import Calibration, SiteCalibration
    from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
    from clreg.registry.store import RedisRegistry

    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    reg.create_model(Model(name=name, factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=8, width=8, classes=classes)))
    fit = SiteCalibration(temperature=1.2, samples=10, ece=0.1, ece_calibrated=0.08, nll=0.5, nll_calibrated=0.45,
                          scores=SCORES if binary_scores else None, labels=LABELS if binary_scores else None)
    cal = Calibration(model=name, sites={"gw-site": fit}, pooled=fit)
    artifacts = {"weights": store.put(weights_to_bytes(small_cnn(1, 8, 8, classes))),
                 "calibration": store.put(cal.model_dump_json().encode())}
    number = reg.register_version(ModelVersion(model=name, number=1, lineage=Lineage(sites=["gw-site"]),
                                               artifacts=artifacts)).number
    reg.promote(name, number, who="test", reason="operating points")
    return number


def test_operating_points_and_site_thresholds(stack: Stack, client: Client, token: str) -> None:
    from typer.testing import CliRunner

    from clreg.cli import app

    version = _serve_version(stack, "bin", 2, binary_scores=True)
    point = client.get("/v1/sites/gw-site/operating-point", model="bin", threshold=0.6)
    assert point["version"] == version and point["samples"] == 10 and point["prevalence"] == 0.4
    assert (point["sensitivity"], point["specificity"], point["ppv"], point["npv"]) == \
        pytest.approx((3 / 4, 4 / 6, 3 / 5, 4 / 5))
    assert client.get("/v1/sites/gw-site/operating-point", model="bin", sensitivity=1.0)["threshold"] == 0.4
    priced = client.get("/v1/sites/gw-site/operating-point", model="bin", cost_fp=1, cost_fn=10)
    assert (priced["threshold"], priced["priced_at_prevalence"]) == (0.4, 0.4)  # a miss costs 10 false alarms
    assert (priced["expected_cost"], priced["expected_cost_at_half"]) == pytest.approx((0.2, 1.2))
    assert (priced["positives"], priced["negatives"], priced["recommended"]) == (4, 6, False)  # too few to choose by
    assert priced["reason"].startswith("4 positives in the held-out set, fewer than the 10 needed to choose")
    assert priced["sensitivity_interval"] == [1.0, 1.0] and len(priced["expected_cost_interval"]) == 2  # all 4 found
    rare = client.get("/v1/sites/gw-site/operating-point", model="bin", cost_fp=1, cost_fn=10, prevalence=0.01)
    assert rare["threshold"] > 0.4 and rare["expected_cost"] < rare["expected_cost_at_half"] + 1e-12
    with pytest.raises(ApiError) as err:
        client.get("/v1/sites/gw-site/operating-point", model="bin", cost_fp=1)
    assert err.value.status == 400 and "cost_fn" in err.value.detail
    with pytest.raises(ApiError) as err:  # no threshold given and none set for the site
        client.get("/v1/sites/gw-site/operating-point", model="bin")
    assert err.value.status == 400 and "threshold" in err.value.detail
    with pytest.raises(ApiError) as err:
        Client(stack.url, admin_token=token).set_threshold("gw-site", 0.6)
    assert err.value.status == 403
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port)}
    out = CliRunner().invoke(app, ["sites", "threshold", "gw-site", "--model", "bin", "--sensitivity", "0.75",
                                   "--set", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["threshold"] == 0.7
    assert next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")["threshold"] == 0.7
    assert client.get("/v1/sites/gw-site/operating-point", model="bin")["sensitivity"] == 0.75  # the site's own
    out = CliRunner().invoke(app, ["sites", "threshold", "gw-site", "--model", "bin", "--cost-fp", "1", "--cost-fn",
                                   "10", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert (json.loads(out.output)["threshold"], json.loads(out.output)["expected_cost"]) == (0.4, pytest.approx(0.2))
    by_cost = ["sites", "threshold", "gw-site", "--model", "bin", "--cost-fp", "1", "--cost-fn", "10", "--set"]
    out = CliRunner().invoke(app, by_cost, env=env)  # 4 positives and 6 negatives: not recommended, not set
    assert out.exit_code == 1 and "not set" in out.output and "4 positives" in out.output, out.output
    assert next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")["threshold"] == 0.7
    out = CliRunner().invoke(app, [*by_cost, "--force", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.output)["set"] is True, out.output
    assert next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")["threshold"] == 0.4
    for model, status in (("tri", 422), ("nobody-serves-this", 404)):
        if model == "tri":
            _serve_version(stack, "tri", 3, binary_scores=False)
        with pytest.raises(ApiError) as err:
            client.get("/v1/sites/gw-site/operating-point", model=model, threshold=0.5)
        assert err.value.status == status, err.value.detail
    client.set_threshold("gw-site", None)


def test_dicom_studies_are_ingested_as_batches(stack: Stack, client: Client, token: str) -> None:
    from clreg.registry.store import RedisRegistry
    from tests.registry.dicomdata import dcm, square, study

    files = {f"img{i}.dcm": dcm(square("tl" if i % 2 else "br", size=32)) for i in range(6)}
    body = study(files, "file,label\n" + "".join(f"img{i}.dcm,{i % 3}\n" for i in range(6)))
    first = client.push("gw-site", token, body, "gw", content_type="application/zip")
    again = client.push("gw-site", token, body, "gw", content_type="application/zip")
    assert (first["status"], first["samples"], again["status"]) == ("accepted", 6, "duplicate")
    assert again["batch_id"] == first["batch_id"]
    batch = RedisRegistry(stack.store).batches.get(first["batch_id"])
    assert batch.class_counts == [2, 2, 2]
    assert batch.source_artifact is None  # by default the study is not kept at rest (patient data)
    before = _state(stack)
    bad = study({"img0.dcm": files["img0.dcm"]}, "file,label\nimg0.dcm,7\n")  # label outside 0..2
    with pytest.raises(ApiError) as err:
        client.push("gw-site", token, bad, "gw", content_type="application/zip")
    assert (err.value.status, err.value.code) == (422, "batch_mismatch") and "outside 0..2" in err.value.detail
    with pytest.raises(ApiError) as err:
        client.push("gw-site", token, b"PK but broken", "gw", content_type="application/zip")
    assert (err.value.status, err.value.code) == (400, "malformed_batch")
    assert _state(stack) == before


def test_cli_pushes_a_folder_of_dicom_files(stack: Stack, client: Client, token: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clreg.cli import app
    from tests.registry.dicomdata import dcm, square

    for i in range(3):
        (tmp_path / f"scan{i}.dcm").write_bytes(dcm(square("tl", size=24, value=1000 * (i + 1))))
    (tmp_path / "labels.csv").write_text("file,label\nscan0.dcm,0\nscan1.dcm,1\nscan2.dcm,2\n")
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port),
           "CLREG_SITE_TOKEN": token}
    out = CliRunner().invoke(app, ["push", "gw-site", str(tmp_path), "--model", "gw", "--json"], env=env)
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert (answer["status"], answer["samples"]) == ("accepted", 3)


def test_an_admin_withdraws_a_waiting_batch_and_nobody_else_can(stack: Stack, client: Client, token: str) -> None:
    body = npz_bytes(np.full((6, 8, 8), 9, np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    batch = client.push("gw-site", token, body, "gw")["batch_id"]  # no daemon here: it stays received
    for tok, status in ((None, 401), (stack.ops_token, 403), (token, 403)):
        r = httpx.post(f"{stack.url}/v1/batches/{batch}/withdraw", json={"reason": "r"},
                       headers={"Authorization": f"Bearer {tok}"} if tok else {})
        assert r.status_code == status and set(r.json()) == {"error", "detail"}
    assert client.get(f"/v1/batches/{batch}")["status"] == "received"
    withdrawn = client.withdraw(batch, "mislabelled")
    assert withdrawn["status"] == "rejected" and withdrawn["detail"].endswith(": mislabelled")
    assert client.get(f"/v1/batches/{batch}")["status"] == "rejected"
    with pytest.raises(ApiError) as err:
        client.withdraw(batch, "again")
    assert err.value.status == 409 and "can be withdrawn" in err.value.detail
    with pytest.raises(ApiError) as err:
        client.withdraw("0" * 64, "unknown")
    assert err.value.status == 404

"""/v1/predict in the formats clients have, through the real Serve proxy: a DICOM file is answered exactly as
the npz ingest made of it, a study names each file, a uint8 npz as the float32 one of x/255, `clreg predict`
sends each of them, and hostile DICOM gets its exact 4xx while the replica keeps answering."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import Stack
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.dicom import DicomLimits, dicom_file, dicom_study, dicom_zip_to_npz
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from tests.registry.dicomdata import square
from tests.serving import hostile

pytestmark = pytest.mark.integration

MODEL = "pf"
SPEC = InputSpec(channels=1, height=16, width=16, classes=3)


def _net() -> torch.nn.Module:
    torch.manual_seed(7)
    return small_cnn(1, 16, 16, 3).eval()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    """Model pf (1x16x16, 3 classes, no calibration: temperature 1) served at version 1."""
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    reg.create_model(Model(name=MODEL, factory="clreg.learner.models:small_cnn", input=SPEC))
    v1 = reg.register_version(ModelVersion(model=MODEL, number=1, lineage=Lineage(),
                                           artifacts={"weights": store.put(weights_to_bytes(_net()))}))
    reg.promote(MODEL, v1.number, who="test", reason="serve")
    api = Client(stack.url, token=stack.ops_token)
    deadline = time.monotonic() + 30
    while True:
        try:
            api.predict(np.zeros((1, 16, 16), np.float32), MODEL)
            return api
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _expected(x_uint8: np.ndarray) -> np.ndarray:
    """The probabilities computed here from the same weights (temperature 1), to the 6 decimals answered."""
    with torch.no_grad():
        logits = _net()(torch.from_numpy(x_uint8.astype(np.float32) / 255.0))
    return torch.softmax(logits, dim=1).numpy()


def _images() -> dict[str, bytes]:
    """Three files ingest treats differently: a windowed, rescaled ramp; MONOCHROME1; a 12-bit square (40x40,
    area-resized to 16x16)."""
    ramp = np.tile(np.arange(40) * 90, (40, 1))
    return {"ramp.dcm": dicom_file(ramp, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=500, WindowWidth=2000),
            "mono1.dcm": dicom_file(square("br", size=40), "MONOCHROME1"),
            "square.dcm": dicom_file(square("tl", size=40, value=3000))}


def _ingested(files: dict[str, bytes]) -> np.ndarray:
    """x of the npz ingest stores for these files pushed as a study (images in file-name order)."""
    labels = {name: 0 for name in files}
    with np.load(io.BytesIO(dicom_zip_to_npz(dicom_study(files, labels), SPEC, DicomLimits())),
                 allow_pickle=False) as npz:
        return npz["x"]


def test_a_dicom_file_is_answered_as_the_npz_ingest_made_of_it(client: Client) -> None:
    files = _images()
    ingested = _ingested(files)  # mono1, ramp, square
    assert ingested.dtype == np.uint8 and ingested.shape == (3, 1, 16, 16)
    by_npz, version = client.predict_bytes(npz_bytes(ingested), "application/octet-stream", MODEL)
    assert version == 1 and by_npz["inputs"] == [0, 1, 2]
    for i, name in enumerate(sorted(files)):
        answer, served = client.predict_bytes(files[name], "application/dicom", MODEL)
        assert served == 1 and answer["inputs"] == [0] and answer["labels"] == [by_npz["labels"][i]]
        np.testing.assert_allclose(answer["probabilities"], [by_npz["probabilities"][i]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(by_npz["probabilities"], _expected(ingested), rtol=0, atol=2e-6)
    spread = np.ptp(np.array(by_npz["probabilities"]), axis=0).max()
    assert spread > 1e-3  # the three images are told apart: equal answers are not a constant


def test_a_study_answers_every_file_in_name_order_and_names_them(client: Client) -> None:
    files = _images()
    want = _expected(_ingested(files))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:  # a zipped folder, out of order, with labels.csv and clutter
        for name in ("square.dcm", "ramp.dcm", "mono1.dcm"):
            archive.writestr(f"study/{name}", files[name])
        archive.writestr("study/labels.csv", "file,label\nsquare.dcm,1\n")
        archive.writestr("study/.DS_Store", b"\x00")
    answer, version = client.predict_bytes(zipped.getvalue(), "application/zip", MODEL, site="pf-site")
    assert version == 1 and answer["inputs"] == ["study/mono1.dcm", "study/ramp.dcm", "study/square.dcm"]
    assert answer["site"] == "pf-site" and len(answer["labels"]) == 3
    np.testing.assert_allclose(answer["probabilities"], want, rtol=0, atol=2e-6)
    bare, _ = client.predict_bytes(dicom_study(files, None), "application/zip", MODEL)  # no labels.csv at all
    assert bare["inputs"] == ["mono1.dcm", "ramp.dcm", "square.dcm"]
    np.testing.assert_allclose(bare["probabilities"], want, rtol=0, atol=2e-6)


def test_a_uint8_npz_answers_as_the_float32_npz_of_x_over_255(client: Client) -> None:
    x = np.random.default_rng(3).integers(0, 256, size=(4, 16, 16), dtype=np.uint8)
    as_uint8, _ = client.predict_bytes(npz_bytes(x), "application/octet-stream", MODEL)
    as_float, _ = client.predict_bytes(npz_bytes(x.astype(np.float32) / 255.0), "application/octet-stream", MODEL)
    as_json, _ = client.predict(x.astype(np.float32) / 255.0, MODEL)
    assert as_uint8["inputs"] == as_float["inputs"] == as_json["inputs"] == [0, 1, 2, 3]
    np.testing.assert_allclose(as_uint8["probabilities"], as_float["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(as_uint8["probabilities"], as_json["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(as_uint8["probabilities"], _expected(x[:, None]), rtol=0, atol=2e-6)


def test_clreg_predict_sends_a_dicom_file_a_study_a_folder_and_an_npz(client: Client, stack: Stack,
                                                                     tmp_path: Path) -> None:
    from clreg.cli import app

    files = _images()
    ingested = _ingested(files)
    want = client.predict_bytes(npz_bytes(ingested), "application/octet-stream", MODEL)[0]["probabilities"]
    folder = tmp_path / "study"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (tmp_path / "IM0001").write_bytes(files["mono1.dcm"])  # PACS exports often have no extension
    (tmp_path / "study.zip").write_bytes(dicom_study(files, None))
    np.savez(tmp_path / "x.npz", x=ingested.astype(np.float64) / 255.0)  # float64: sent as float32
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port)}

    def run(*args: str) -> dict:
        result = CliRunner().invoke(app, ["predict", *args, "--model", MODEL, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def close(got: list, rows: list) -> None:
        np.testing.assert_allclose(got, rows, rtol=0, atol=1e-6)

    single = run(str(folder / "ramp.dcm"))
    assert single["inputs"] == [0]
    close(single["probabilities"], [want[1]])
    close(run(str(tmp_path / "IM0001"))["probabilities"], [want[0]])
    for where in (folder, tmp_path / "study.zip"):
        answer = run(str(where))
        assert answer["inputs"] == ["mono1.dcm", "ramp.dcm", "square.dcm"]
        close(answer["probabilities"], want)
    close(run(str(tmp_path / "x.npz"))["probabilities"], want)
    table = CliRunner().invoke(app, ["predict", str(folder), "--model", MODEL], env=env)
    assert table.exit_code == 0 and "  ramp.dcm: " in table.output, table.output
    bad = CliRunner().invoke(app, ["predict", str(tmp_path / "IM0001"), "--model", "nobody"], env=env)
    assert isinstance(bad.exception, ApiError) and bad.exception.status == 404

def test_hostile_dicom_gets_its_exact_refusal_and_the_replica_keeps_answering(client: Client, stack: Stack) -> None:
    cases = [dataclasses.replace(c, params={**c.params, "model": MODEL})
             for c in hostile.predict_dicom(stack.settings.serve.predict_max_body_bytes)]
    wrong, details = [], {}
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        for case in cases:
            started = time.monotonic()
            r = http.request(case.method, case.path, params=case.params, headers=case.headers, content=case.content)
            seconds, body = time.monotonic() - started, r.json()
            details[case.name] = body.get("detail", "")
            if (r.status_code, body.get("error")) != (case.status, case.code) or seconds > 2.0:
                wrong.append(f"{case.name}: {r.status_code} {body} in {seconds:.2f} s; want {case.status} {case.code}")
    assert not wrong, "\n".join(wrong)
    assert "the body is not a readable DICOM file" in details["predict-dicom-not-dicom"]
    assert "the body has 3 frames" in details["predict-dicom-multiframe"]
    assert "b.dcm is not a readable DICOM file" in details["predict-study-one-bad-of-two"]
    assert "holds 1025 images; send at most 1024" in details["predict-study-1025-files"]
    assert "inflates to more than" in details["predict-study-inflates-2gib"]
    answer, version = client.predict_bytes(_images()["ramp.dcm"], "application/dicom", MODEL)
    assert version == 1 and answer["inputs"] == [0]

"""DICOM ingest: a zip of DICOM files plus labels.csv becomes the same npz every time, or a clear refusal."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest

from clreg.registry.batches import Limits, parse_batch
from clreg.registry.dicom import KEPT, DicomLimits, dicom_zip_to_npz
from clreg.registry.errors import BatchMismatch, MalformedBatch
from clreg.registry.records import InputSpec
from tests.registry.dicomdata import dcm, square, study

GREY = InputSpec(channels=1, height=16, width=16, classes=2)


def _arrays(npz: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        return f["x"], f["y"]


def test_images_are_windowed_oriented_resized_and_labelled_by_name() -> None:
    files = {"b.dcm": dcm(square("br")), "a.dcm": dcm(square("tl")),
             "c.dcm": dcm(square("tl"), photometric="MONOCHROME1")}  # bright square = low density: inverted
    x, y = _arrays(dicom_zip_to_npz(study(files, "file,label\nc.dcm,1\na.dcm,1\nb.dcm,0\n"), GREY, DicomLimits()))
    assert x.shape == (3, 1, 16, 16) and x.dtype == np.uint8 and y.tolist() == [1, 0, 1]  # a, b, c
    bright = round(4000 / 4095 * 255)  # scaled by the 12 stored bits, not by the image's own maximum
    assert (x[0, 0, :8, :8] == bright).all() and (x[0, 0, 8:, 8:] == 0).all()
    assert (x[1, 0, 8:, 8:] == bright).all() and (x[1, 0, :8, :8] == 0).all()
    assert (x[2, 0, :8, :8] == 255 - bright).all() and (x[2, 0, 8:, 8:] == 255).all()
    parse_batch(dicom_zip_to_npz(study(files, "file,label\nc.dcm,1\na.dcm,1\nb.dcm,0\n"), GREY, DicomLimits()),
                GREY, Limits())  # the result passes the ordinary npz checks


def test_rescale_and_window_come_from_the_file() -> None:
    ramp = np.tile(np.arange(64) * 60, (64, 1))  # stored 0..3780, rescaled to -1000..2780
    windowed = dcm(ramp, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=400)
    x, _ = _arrays(dicom_zip_to_npz(study({"w.dcm": windowed}, "file,label\nw.dcm,0\n"), GREY, DicomLimits()))
    row = x[0, 0, 8]
    assert row[0] == 0 and row[-1] == 255  # -1000 and 2780 fall outside the window [-200, 200]
    assert (row[6:] == 255).all() and 0 < (row > 0).sum() < 16  # the ramp saturates within a few columns


def test_a_darker_scanner_stays_darker() -> None:
    """No per-image stretching: half the signal gives half the brightness, for the drift check to see."""
    full = dcm(square("tl", value=4000))
    half = dcm(square("tl", value=2000))
    x, _ = _arrays(dicom_zip_to_npz(study({"a.dcm": full, "b.dcm": half}, "file,label\na.dcm,0\nb.dcm,0\n"), GREY,
                                    DicomLimits()))
    assert abs(int(x[1, 0, 0, 0]) * 2 - int(x[0, 0, 0, 0])) <= 1


def test_rgb_maps_to_grey_or_three_channels() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :, 0] = 200  # red top half
    data = study({"r.dcm": dcm(rgb, photometric="RGB")}, "file,label\nr.dcm,1\n")
    grey, _ = _arrays(dicom_zip_to_npz(data, GREY, DicomLimits()))
    colour, _ = _arrays(dicom_zip_to_npz(data, InputSpec(channels=3, height=16, width=16, classes=2), DicomLimits()))
    assert grey.shape == (1, 1, 16, 16) and (grey[0, 0, :8] == round(200 * 0.299)).all() and grey[0, 0, 8:].max() == 0
    assert colour.shape == (1, 3, 16, 16) and (colour[0, 0, :8] == 200).all() and colour[0, 1].max() == 0


def test_the_same_study_gives_the_same_bytes_whatever_the_zip_order() -> None:
    a, b = dcm(square("tl")), dcm(square("br"))
    first = dicom_zip_to_npz(study({"a.dcm": a, "b.dcm": b}, "file,label\na.dcm,0\nb.dcm,1\n"), GREY, DicomLimits())
    again = dicom_zip_to_npz(study({"b.dcm": b, "a.dcm": a}, "file,label\nb.dcm,1\na.dcm,0\n"), GREY, DicomLimits())
    assert first == again


@pytest.mark.parametrize(("body", "error", "words"), [
    (b"not a zip at all", MalformedBatch, "not a readable zip"),
    (study({"a.dcm": dcm(square("tl"))}, None), MalformedBatch, "labels.csv"),
    (study({"a.dcm": dcm(square("tl"))}, "name,y\na.dcm,0\n"), MalformedBatch, "header 'file,label'"),
    (study({"a.dcm": dcm(square("tl"))}, "file,label\na.dcm,zero\n"), MalformedBatch, "line 2"),
    (study({"a.dcm": dcm(square("tl")), "b.dcm": dcm(square("br"))}, "file,label\na.dcm,0\n"), BatchMismatch,
     "unlabelled ['b.dcm']"),
    (study({"a.dcm": dcm(square("tl"))}, "file,label\na.dcm,0\nz.dcm,1\n"), BatchMismatch, "absent ['z.dcm']"),
    (study({"a.dcm": b"\x00" * 200}, "file,label\na.dcm,0\n"), MalformedBatch, "a.dcm is not a readable DICOM"),
    (study({"a.dcm": dcm(square("tl"), compressed=True)}, "file,label\na.dcm,0\n"), BatchMismatch, "compressed"),
    (study({"a.dcm": dcm(square("tl"), NumberOfFrames=2)}, "file,label\na.dcm,0\n"), BatchMismatch, "frames"),
])
def test_bad_studies_are_refused_with_the_reason(body: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        dicom_zip_to_npz(body, GREY, DicomLimits())


def test_a_zipped_folder_and_archiver_clutter_are_understood() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:  # what zipping a folder on a Mac gives
        archive.writestr("study/a.dcm", dcm(square("tl")))
        archive.writestr("study/labels.csv", "file,label\na.dcm,1\n")
        archive.writestr("study/.DS_Store", b"\x00\x01")
        archive.writestr("__MACOSX/study/._a.dcm", b"\x00\x05")
    x, y = _arrays(dicom_zip_to_npz(buf.getvalue(), GREY, DicomLimits()))
    assert x.shape == (1, 1, 16, 16) and y.tolist() == [1]


def test_size_limits_apply_before_anything_is_inflated() -> None:
    files = {f"{i}.dcm": dcm(square("tl")) for i in range(3)}
    body = study(files, "file,label\n" + "".join(f"{i}.dcm,0\n" for i in range(3)))
    with pytest.raises(BatchMismatch, match="at most 2 images"):
        dicom_zip_to_npz(body, GREY, DicomLimits(max_files=2))
    with pytest.raises(BatchMismatch, match="inflates to more than"):
        dicom_zip_to_npz(body, GREY, DicomLimits(max_unzipped_bytes=10_000))


def test_a_kept_study_is_de_identified_and_keeps_its_pixels() -> None:
    from clreg.registry.dicom import DicomLimits, deidentified_study

    pixels = square("tl", size=16)
    tags = {"PatientName": "Doe^Jane", "PatientID": "123-45", "PatientBirthDate": "19700101",
            "InstitutionName": "St Example", "StudyDate": "20260101", "AccessionNumber": "A1"}
    body = study({"a.dcm": dcm(pixels, **tags)}, "file,label\na.dcm,1\n")
    kept = deidentified_study(body, DicomLimits())
    assert kept == deidentified_study(body, DicomLimits())  # deterministic: the same study, the same bytes
    with zipfile.ZipFile(io.BytesIO(kept)) as archive:
        ds = pydicom.dcmread(io.BytesIO(archive.read("a.dcm")))
        assert archive.read("labels.csv") == b"file,label\na.dcm,1\n"
    assert not [k for k in tags if k in ds]
    assert {e.keyword for e in ds} <= KEPT | {"SOPInstanceUID"}
    original = pydicom.dcmread(io.BytesIO(dcm(pixels, **tags)))
    assert (ds.pixel_array == original.pixel_array).all() and ds.SOPInstanceUID != original.SOPInstanceUID


def test_a_prediction_study_converts_as_ingest_does_and_names_its_files() -> None:
    """Labels optional; the images equal ingest's, in file-name order, named by their path in the zip."""
    from clreg.registry.dicom import dicom_image, dicom_zip_images

    ramp = np.tile(np.arange(40) * 90, (40, 1))
    files = {"b.dcm": dcm(ramp, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=500, WindowWidth=2000),
             "a.dcm": dcm(square("br", size=40), photometric="MONOCHROME1")}
    ingested, _ = _arrays(dicom_zip_to_npz(study(files, "file,label\na.dcm,0\nb.dcm,1\n"), GREY, DicomLimits()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in ("b.dcm", "a.dcm"):
            archive.writestr(f"study/{name}", files[name])
        archive.writestr("study/.DS_Store", b"\x00")
    names, x = dicom_zip_images(buf.getvalue(), GREY, DicomLimits())
    assert names == ["study/a.dcm", "study/b.dcm"] and x.dtype == np.uint8 and (x == ingested).all()
    labelled_names, labelled = dicom_zip_images(study(files, "file,label\na.dcm,0\n"), GREY, DicomLimits())
    assert labelled_names == ["a.dcm", "b.dcm"] and (labelled == ingested).all()  # labels.csv ignored
    assert (dicom_image("b.dcm", files["b.dcm"], GREY, DicomLimits()) == ingested[1]).all()
    assert len(np.unique(ingested[1])) > 8 and ingested[0, 0, 0, 0] == 255  # a windowed ramp; MONOCHROME1 inverted


@pytest.mark.parametrize(("body", "limits", "words"), [
    (study({}, "file,label\n"), DicomLimits(), "holds no DICOM file"),
    (study({f"{i}.dcm": dcm(square("tl")) for i in range(3)}, None), DicomLimits(max_files=2),
     "holds 3 images; send at most 2"),
    (study({f"{i}.dcm": dcm(square("tl")) for i in range(2)}, "file,label\n"), DicomLimits(max_files=2), None),
    (study({"a.dcm": b"\x00" * 200}, None), DicomLimits(), "a.dcm is not a readable DICOM"),
])
def test_a_prediction_study_is_refused_with_the_reason(body: bytes, limits: DicomLimits, words: str | None) -> None:
    from clreg.registry.dicom import dicom_zip_images

    if words is None:  # labels.csv does not count as an image
        assert len(dicom_zip_images(body, GREY, limits)[0]) == 2
        return
    with pytest.raises((BatchMismatch, MalformedBatch), match=words):
        dicom_zip_images(body, GREY, limits)

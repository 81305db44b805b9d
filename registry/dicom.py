"""DICOM ingest: a zip of single-frame DICOM images plus `labels.csv` becomes the canonical npz batch.

Predictions take the same images (one file, or a study without labels) through the same conversion
(`dicom_image`), so a DICOM file is answered exactly as the npz ingest made of it.

Everything is read in memory (no name from the zip ever touches a path), sizes are checked before
anything is inflated (then one file at a time), and the conversion is deterministic: the same zip always
gives the same npz bytes, hence the same batch id, so a re-sent study is a duplicate. Per image: pixel
data through the modality LUT (rescale slope/intercept), then the VOI window where the file has one;
values are scaled to [0, 1] over the range the file's bit depth allows (not per image: a site's darker
scanner must stay visible to the drift check); MONOCHROME1 is inverted so that bright means dense in
every image; each image is area-resized to the model's input size and stored as uint8 like any pushed npz.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # type: ignore[attr-defined]
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from clreg.registry.errors import BatchMismatch, MalformedBatch
from clreg.registry.records import InputSpec

LABELS_FILE = "labels.csv"
GRAY = ("MONOCHROME1", "MONOCHROME2")
EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the npz bytes depend on the content only


# Uncompressed transfer syntaxes clreg reads. The deflated one is refused: pydicom would inflate it whole,
# past any size check (send it uncompressed).
READABLE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
LABEL = re.compile(r"^-?[0-9]{1,9}$")  # ASCII digits only: str.isdigit() also takes '²' and other numerals
# What a de-identified copy keeps: the pixels and what is needed to read them, nothing about the patient,
# the study, the institution or the device (stricter than the DICOM basic profile, which lists removals).
KEPT = frozenset({
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "PixelData", "SOPClassUID",
})


@dataclass(frozen=True)
class DicomLimits:
    max_files: int = 10_000
    max_unzipped_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024  # rows x columns x samples x frames of one image


def dicom_zip_to_npz(data: bytes, spec: InputSpec, limits: DicomLimits) -> bytes:
    """The npz bytes (x uint8 [N, C, H, W], y int64 [N]) of a DICOM zip, images in file-name order.

    Raises:
        MalformedBatch: not a zip, no or unreadable labels.csv, a member that is not DICOM.
        BatchMismatch: too many or too large members, labels and files that do not match, or images
            clreg cannot use (compressed transfer syntax, several frames, colour models it does not map).
    """
    study = _Study.open(data, limits)
    labels = _labels(study.labels())
    images = study.images()
    missing, unlabelled = sorted(set(labels) - set(images)), sorted(set(images) - set(labels))
    if missing or unlabelled:
        raise BatchMismatch(f"{LABELS_FILE} and the DICOM files must match: labelled but absent {missing[:3]}, "
                            f"present but unlabelled {unlabelled[:3]}")
    names = sorted(labels)
    x = np.stack([dicom_image(name, study.read(name), spec, limits) for name in names])
    return _npz(x, np.array([labels[n] for n in names], dtype=np.int64))


def dicom_zip_images(data: bytes, spec: InputSpec, limits: DicomLimits) -> tuple[list[str], np.ndarray]:
    """A study's images as ingest converts them (uint8 [N, C, H, W], file-name order) and each one's path in the
    zip: what a prediction answers. labels.csv, if there is one, is ignored.

    Raises:
        MalformedBatch, BatchMismatch: as dicom_zip_to_npz, and a zip that holds no DICOM file.
    """
    study = _Study.open(data, limits)
    names = study.images()
    if not names:
        raise BatchMismatch("the zip holds no DICOM file")
    x = np.stack([dicom_image(name, study.read(name), spec, limits) for name in names])
    return [study.infos[n].filename for n in names], x


@dataclass(frozen=True)
class _Study:
    """A zip's files by name (its one top-level folder, if any, left out), read one at a time when needed, so
    that no more than one inflated file is held at once."""

    archive: zipfile.ZipFile
    infos: dict[str, zipfile.ZipInfo]

    @classmethod
    def open(cls, data: bytes, limits: DicomLimits) -> _Study:
        """The zip's directory, after checking methods, the number of images and the declared sizes."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as e:
            raise MalformedBatch(f"the body is not a readable zip: {e}") from e
        infos = [i for i in archive.infolist() if not i.is_dir() and not _clutter(i.filename)]
        for info in infos:
            if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise MalformedBatch(f"{info.filename} is encrypted or uses compression method "
                                     f"{info.compress_type}; send a plain zip (stored or deflated members)")
        top = _common_folder([i.filename for i in infos])
        named = {_name(i.filename, top): i for i in infos}
        images = len(named) - (LABELS_FILE in named)
        if images > limits.max_files:
            raise BatchMismatch(f"the zip holds {images} images; send at most {limits.max_files} images")
        if sum(i.file_size for i in infos) > limits.max_unzipped_bytes:
            raise BatchMismatch(f"the zip inflates to more than {limits.max_unzipped_bytes} bytes")
        return cls(archive, named)

    def images(self) -> list[str]:
        """Every file but labels.csv, in name order."""
        return sorted(n for n in self.infos if n != LABELS_FILE)

    def labels(self) -> bytes:
        """The raw labels.csv, which a pushed study must hold."""
        if LABELS_FILE not in self.infos:
            raise MalformedBatch(f"the zip must hold {LABELS_FILE} (columns file,label) at its top level")
        return self.read(LABELS_FILE)

    def read(self, name: str) -> bytes:
        try:  # read() stops at the declared size and checks the CRC, so a lying header cannot inflate more
            return self.archive.read(self.infos[name])
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as e:
            raise MalformedBatch(f"the zip is damaged: {e}") from e


def _clutter(name: str) -> bool:
    """Entries archivers add beside the files (macOS resource forks, .DS_Store and other dot files)."""
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith(".")


def _common_folder(names: list[str]) -> str:
    """The one top-level folder every entry sits in ("study/" when a folder was zipped), else ""."""
    tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
    return tops.pop() if len(tops) == 1 and all("/" in n for n in names) else ""


def _name(name: str, top: str) -> str:
    return name[len(top):] if top and name.startswith(top) else name


def _labels(raw: bytes) -> dict[str, int]:
    """file -> label from labels.csv; the header must be `file,label`."""
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise MalformedBatch(f"{LABELS_FILE} is not UTF-8 CSV: {e}") from e
    if not rows or [c.strip().lower() for c in rows[0]] != ["file", "label"]:
        raise MalformedBatch(f"{LABELS_FILE} must start with the header 'file,label'")
    labels: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not LABEL.fullmatch(row[1].strip()):
            raise MalformedBatch(f"{LABELS_FILE} line {n}: expected 'file,integer label', got {row!r:.200}")
        if row[0] in labels:
            raise MalformedBatch(f"{LABELS_FILE} line {n}: {row[0]!r} is labelled twice")
        labels[row[0]] = int(row[1])
    if not labels:
        raise BatchMismatch(f"{LABELS_FILE} labels no image")
    return labels


def _read(name: str, raw: bytes, limits: DicomLimits) -> pydicom.Dataset:
    """A DICOM file, its transfer syntax and declared image size checked before its pixels are read.

    pydicom is the boundary here: whatever it raises on a hostile file is a refusal, never a crash.
    """
    try:
        head = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        syntax = head.file_meta.get("TransferSyntaxUID") if hasattr(head, "file_meta") else None
        if syntax is not None and syntax not in READABLE:
            raise BatchMismatch(f"{name} uses the transfer syntax {syntax!s:.80}; send it uncompressed "
                                "(Explicit VR Little Endian)")
        frames = int(head.get("NumberOfFrames", 1) or 1)
        pixels = int(head.get("Rows", 0)) * int(head.get("Columns", 0)) * int(head.get("SamplesPerPixel", 1) or 1)
        if frames > 1:
            raise BatchMismatch(f"{name} has {frames} frames; send single-frame images")
        if pixels > limits.max_pixels:
            raise BatchMismatch(f"{name} declares {pixels:,} pixels; the limit is {limits.max_pixels:,} per image")
        return pydicom.dcmread(io.BytesIO(raw))
    except (BatchMismatch, MalformedBatch):
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the parser on untrusted bytes is a refusal
        raise MalformedBatch(f"{name} is not a readable DICOM file: {type(e).__name__}: {e!s:.200}") from e


def dicom_image(name: str, raw: bytes, spec: InputSpec, limits: DicomLimits) -> np.ndarray:
    """One DICOM file as uint8 [C, H, W] at the model's size: the one conversion ingest and prediction share.

    Raises:
        MalformedBatch: the bytes are not a readable DICOM file.
        BatchMismatch: a file clreg cannot use (no pixels, compressed, several frames, past max_pixels, a
            colour model it does not map, pixel data that does not decode).
    """
    ds = _read(name, raw, limits)
    if "PixelData" not in ds:
        raise BatchMismatch(f"{name} holds no pixel data")
    if spec.channels not in (1, 3):
        raise BatchMismatch(f"DICOM images map to 1 or 3 channels; this model takes {spec.channels}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in (*GRAY, "RGB"):
        raise BatchMismatch(f"{name} has photometric interpretation {photometric!r}; clreg reads "
                            "MONOCHROME1, MONOCHROME2 and RGB")
    try:
        planes = _planes(ds, photometric, spec)
    except Exception as e:  # noqa: BLE001 - pydicom decoding untrusted pixel data: a refusal, never a crash
        raise BatchMismatch(f"{name}: the pixel data cannot be decoded: {type(e).__name__}: {e!s:.200}") from e
    return np.stack([_resized(np.clip(p, 0.0, 1.0).astype(np.float32), spec) for p in planes])


def _planes(ds: pydicom.Dataset, photometric: str, spec: InputSpec) -> list[np.ndarray]:
    """The image's channels as floats in [0, 1] (before resizing)."""
    pixels = ds.pixel_array
    if photometric == "RGB":
        rgb = pixels.astype(np.float64) / 255.0
        return [rgb[..., c] for c in range(3)] if spec.channels == 3 else [rgb @ np.array([0.299, 0.587, 0.114])]
    lo, hi = _value_range(ds)
    if not hi > lo:
        raise ValueError(f"the value range [{lo}, {hi}] is empty")
    values = (apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64) - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return [values] * (3 if spec.channels == 3 else 1)


def _value_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The range of values after the modality LUT (and the VOI window, which maps onto the same range).

    Fixed by the file's bit depth and rescale, not by the image's own minimum and maximum: a site whose
    scanner gives darker or flatter images must look so to the model and to the drift check.
    """
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return ends[0], ends[1]


def _resized(plane: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Area average when shrinking, bilinear when enlarging, to the model's H x W, as uint8."""
    shrink = plane.shape[0] >= spec.height and plane.shape[1] >= spec.width
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(plane).resize((spec.width, spec.height), resample=resample))
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _npz(x: np.ndarray, y: np.ndarray) -> bytes:
    """np.savez's layout with fixed timestamps, so equal arrays always give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in (("x", x), ("y", y)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=EPOCH), member.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def deidentified_study(data: bytes, limits: DicomLimits) -> bytes:
    """The study with every DICOM file reduced to the attributes in KEPT and fresh UIDs derived from its pixels
    (so the same study gives the same bytes), plus labels.csv: what is kept at rest when sources are kept."""
    study = _Study.open(data, limits)
    labels = study.labels()
    files = {}
    for name in study.images():
        ds = _read(name, study.read(name), limits)
        for element in list(ds):
            if element.keyword not in KEPT:
                del ds[element.tag]
        uid = generate_uid(entropy_srcs=[bytes(ds.PixelData).hex()])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", SecondaryCaptureImageStorage)
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files[name] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, raw in [*files.items(), (LABELS_FILE, labels)]:
            archive.writestr(zipfile.ZipInfo(name, date_time=EPOCH), raw, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def dicom_file(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags: object) -> bytes:
    """One single-frame, uncompressed DICOM file (grey [H, W] as unsigned `bits`-bit values, or RGB
    [H, W, 3] uint8) with any extra tags: for demos, tests and sites trying the DICOM path."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[pixels.tobytes().hex()])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if photometric == "RGB":
        ds.set_pixel_data(pixels.astype(np.uint8), "RGB", 8)
    else:
        ds.set_pixel_data(pixels.astype(np.uint16), photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_study(files: dict[str, bytes], labels: dict[str, int] | None) -> bytes:
    """A zip of DICOM files plus labels.csv (None: leave the labels file out)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if labels is not None:
            archive.writestr(LABELS_FILE, "file,label\n" + "".join(f"{n},{k}\n" for n, k in labels.items()))
    return buf.getvalue()

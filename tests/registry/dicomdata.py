"""DICOM files and zips built in memory, for the ingest tests (clreg's own writer plus raw cases)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from clreg.registry.dicom import dicom_file, dicom_study


def dcm(pixels: np.ndarray, photometric: str = "MONOCHROME2", compressed: bool = False, **tags: object) -> bytes:
    """One single-frame DICOM file; `compressed` declares JPEG (clreg refuses it before decoding a frame)."""
    raw = dicom_file(pixels, photometric, **tags)
    if not compressed:
        return raw
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 not really a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study(files: dict[str, bytes], labels: str | None) -> bytes:
    """A zip of the files plus a labels.csv given as raw text (None: no labels file), for malformed cases."""
    buf = io.BytesIO(dicom_study(files, None))
    if labels is not None:
        with zipfile.ZipFile(buf, "a") as archive:
            archive.writestr("labels.csv", labels)
    return buf.getvalue()


def square(corner: str, size: int = 64, value: int = 4000) -> np.ndarray:
    """A dark image with a bright square in the top-left ("tl") or bottom-right ("br") quarter."""
    img = np.zeros((size, size))
    half = size // 2
    if corner == "tl":
        img[:half, :half] = value
    else:
        img[half:, half:] = value
    return img

"""DICOM files and zips built in memory with pydicom, for the ingest tests."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def dcm(pixels: np.ndarray, photometric: str = "MONOCHROME2", compressed: bool = False, **tags: object) -> bytes:
    """One single-frame DICOM file (uint16 grey, or uint8 RGB [H, W, 3]) with any extra tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[pixels.tobytes().hex()])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if photometric == "RGB":
        ds.set_pixel_data(pixels.astype(np.uint8), "RGB", 8)
    else:
        ds.set_pixel_data(pixels.astype(np.uint16), photometric, 12)
    for key, value in tags.items():
        setattr(ds, key, value)
    if compressed:  # only the declared syntax matters: clreg refuses before decoding the frame
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8 not really a jpeg \xff\xd9"])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study(files: dict[str, bytes], labels: str | None) -> bytes:
    """A zip of the files plus labels.csv (None: no labels file)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if labels is not None:
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

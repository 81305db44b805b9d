"""A prediction's inputs from its body, in the formats clients have.

JSON `{"inputs": [...], "site": optional}`; an npz with `x` (uint8 0-255 or float32 0-1) as
application/octet-stream; one DICOM file as application/dicom; a DICOM study zip as application/zip
(single-frame files; a labels.csv in it is ignored). DICOM goes through ingest's own conversion
(registry/dicom.py), so a file is answered exactly as the npz ingest made of it. Sizes are checked before
arrays are built: the number of samples from the JSON list, the npz header or the zip directory, the
shape against the model's input spec; hostile JSON (deep nesting, numbers past float range, strings) is a
400, a DICOM body clreg cannot read or use a 422 naming the file, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from clreg.registry.dicom import DicomLimits, dicom_image, dicom_zip_images
from clreg.registry.errors import BatchMismatch, MalformedBatch, TooLarge
from clreg.registry.npz import NpzLimits, NpzReader
from clreg.registry.records import InputSpec, check_name
from clreg.serving.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMedia

KINDS = ("application/json", "application/octet-stream", "application/dicom", "application/zip")


@dataclass(frozen=True)
class Inputs:
    """The images as float32 [N, C, H, W] in [0, 1], the site, and what names each image in the answer: its
    index, or for a DICOM study the file's path in the zip."""

    x: np.ndarray
    site: str | None
    names: list[int] | list[str]


def parse_inputs(body: bytes, content_type: str, spec: InputSpec, max_samples: int, site: str | None = None,
                 max_unzipped_bytes: int = DicomLimits.max_unzipped_bytes) -> Inputs:
    """The request's inputs; `site` is the ?site= query parameter (a JSON body may name it instead)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in KINDS:
        raise UnsupportedMedia(f"content type {content_type!r:.80}; send application/json, application/octet-stream "
                               "(npz), application/dicom (one DICOM file) or application/zip (a DICOM study)")
    names: list[int] | list[str] | None = None
    site = _site(site)  # refused before a body is converted
    if kind == "application/json":
        x, named = _from_json(body, max_samples)
        if named is not None and site is not None and named != site:
            raise BadRequest(f"the body names site {named!r}, ?site= names {site!r}")
        site = named or site
    elif kind == "application/octet-stream":
        x = _from_npz(body, spec, max_samples)
    else:
        names, x = _from_dicom(body, kind, spec, DicomLimits(max_files=max_samples,
                                                             max_unzipped_bytes=max_unzipped_bytes))
    return Inputs(_checked(x, spec), site, names if names is not None else list(range(len(x))))


def _checked(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The inputs as [N, C, H, W] of the model's size with finite values."""
    if x.ndim == 3 and spec.channels == 1:
        x = x[:, None]
    want = (spec.channels, spec.height, spec.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] == 0:
        raise BadRequest(f"inputs have shape {list(x.shape)}; this model takes [N, {want[0]}, {want[1]}, {want[2]}]")
    if not np.isfinite(x).all():
        raise BadRequest("inputs hold NaN or infinite values (or numbers past float32's range)")
    return x


def _site(site: object) -> str | None:
    if site is None:
        return None
    if not isinstance(site, str):
        raise BadRequest("site must be a string")
    try:  # it names Redis keys where the replica records its answers
        return check_name(site)
    except ValueError as e:
        raise BadRequest(f"site: {e}") from e


def _from_json(body: bytes, max_samples: int) -> tuple[np.ndarray, str | None]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than any image needs
        raise BadRequest(f'expected JSON {{"inputs": [[...]], "site": optional}}: {str(e)[:200]}') from e
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest('expected JSON {"inputs": [[...]], "site": optional}')
    inputs, site = payload["inputs"], _site(payload.get("site"))
    if len(inputs) > max_samples:
        raise PayloadTooLarge(f"{len(inputs)} inputs in one request; send at most {max_samples}")
    try:
        with np.errstate(over="ignore"):  # past float32's range becomes inf, refused below
            return np.asarray(inputs, dtype=np.float32), site
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise BadRequest(f"inputs must be a nested list of numbers [N, C, H, W] or [N, H, W]: {str(e)[:200]}") from e


def _from_npz(body: bytes, spec: InputSpec, max_samples: int) -> np.ndarray:
    per_sample = spec.channels * spec.height * spec.width * 4
    try:
        reader = NpzReader(body, NpzLimits(max_bytes=max_samples * per_sample))
        reader.require("x")
        dtype, shape = reader.header("x")
        if dtype not in (np.uint8, np.float32):
            raise BadRequest(f"x has dtype {dtype}; send uint8 (0-255) or float32 (0-1)")
        if shape and shape[0] > max_samples:
            raise PayloadTooLarge(f"x has {shape[0]} samples; send at most {max_samples} per request")
        x = reader.array("x")
    except TooLarge as e:
        raise PayloadTooLarge(str(e)) from e
    except MalformedBatch as e:
        raise BadRequest(f"expected an npz with array 'x': {e}") from e
    return _scaled(x)


def _from_dicom(body: bytes, kind: str, spec: InputSpec, limits: DicomLimits) -> tuple[list[str] | None, np.ndarray]:
    """A DICOM file or study as ingest converts it (uint8 at the model's size), then scaled as a uint8 npz is."""
    try:
        if kind == "application/dicom":
            return None, _scaled(dicom_image("the body", body, spec, limits)[None])
        names, x = dicom_zip_images(body, spec, limits)
    except TooLarge as e:
        raise PayloadTooLarge(str(e)) from e
    except (MalformedBatch, BatchMismatch) as e:
        raise Unprocessable(str(e)) from e  # the file and what is wrong with it
    return names, _scaled(x)


def _scaled(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 divided by 255, float32 as it is."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

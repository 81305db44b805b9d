"""A prediction's inputs from its body: JSON `{"inputs": [...], "site": optional}` or an npz with `x`.

Sizes are checked before arrays are built: the number of samples from the JSON list or the npz header,
the shape against the model's input spec; hostile JSON (deep nesting, numbers past float range, strings)
is a 400, never a crash.
"""

from __future__ import annotations

import json

import numpy as np

from clreg.registry.errors import MalformedBatch, TooLarge
from clreg.registry.npz import NpzLimits, NpzReader
from clreg.registry.records import InputSpec, check_name
from clreg.serving.errors import BadRequest, PayloadTooLarge, UnsupportedMedia


def parse_inputs(body: bytes, content_type: str, spec: InputSpec, max_samples: int) -> tuple[np.ndarray, str | None]:
    """Inputs as float32 [N,C,H,W] in [0,1] plus the optional site."""
    kind = content_type.split(";")[0].strip()
    if kind == "application/json":
        x, site = _from_json(body, spec, max_samples)
    elif kind == "application/octet-stream":
        x, site = _from_npz(body, spec, max_samples), None
    else:
        raise UnsupportedMedia(f"content type {content_type!r:.80}; send application/json or application/octet-stream")
    if x.ndim == 3 and spec.channels == 1:
        x = x[:, None]
    want = (spec.channels, spec.height, spec.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] == 0:
        raise BadRequest(f"inputs have shape {list(x.shape)}; this model takes [N, {want[0]}, {want[1]}, {want[2]}]")
    if not np.isfinite(x).all():
        raise BadRequest("inputs hold NaN or infinite values (or numbers past float32's range)")
    return x, site


def _from_json(body: bytes, spec: InputSpec, max_samples: int) -> tuple[np.ndarray, str | None]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than any image needs
        raise BadRequest(f'expected JSON {{"inputs": [[...]], "site": optional}}: {str(e)[:200]}') from e
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest('expected JSON {"inputs": [[...]], "site": optional}')
    inputs, site = payload["inputs"], payload.get("site")
    if len(inputs) > max_samples:
        raise PayloadTooLarge(f"{len(inputs)} inputs in one request; send at most {max_samples}")
    if site is not None and not isinstance(site, str):
        raise BadRequest("site must be a string")
    if site is not None:  # it names Redis keys where the replica records its answers
        try:
            check_name(site)
        except ValueError as e:
            raise BadRequest(f"site: {e}") from e
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
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

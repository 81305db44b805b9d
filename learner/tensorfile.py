"""Tagged safetensors: tensors plus one JSON metadata entry naming their format (never pickle).

One metadata key only: safetensors writes its metadata map in hash order, so several keys would make
the bytes (and so an artifact's sha256) differ between runs of the same content.
"""

from __future__ import annotations

import json
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from clreg.learner.errors import WeightsError


def dump(tensors: dict[str, Tensor], fmt: str, info: dict[str, Any]) -> bytes:
    """Deterministic bytes of `tensors` tagged with `fmt` and `info`."""
    metadata = {"clreg": json.dumps({"format": fmt, **info}, sort_keys=True)}
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def load(data: bytes, fmt: str, what: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and info of bytes written by `dump` with the same `fmt`.

    Raises:
        WeightsError: not safetensors, or not tagged with `fmt` (`what` names the thing in the message).
    """
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        info = json.loads(metadata.get("clreg", "{}"))
    except (SafetensorError, ValueError) as e:
        raise WeightsError(f"{what} is not valid safetensors: {e}") from e
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise WeightsError(f"{what} lacks the {fmt!r} metadata: it was not written by clreg")
    return tensors, info


def format_of(data: bytes) -> str | None:
    """The format tag of bytes written by `dump`; None for anything else."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        info = json.loads(metadata.get("clreg", "{}"))
    except (ValueError, AttributeError):
        return None
    return info.get("format") if isinstance(info, dict) else None

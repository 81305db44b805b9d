"""Reading untrusted npz bytes with limits checked before anything is allocated or inflated.

numpy's own `np.load` inflates a member and allocates its array from the header it declares; an upload of a
few hundred KB can declare gigabytes. Here every member is checked from the zip directory (method, flags,
sizes) and its npy header (dtype, shape) first; only then is it read, as much as the header declares.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, cast

import numpy as np

from clreg.registry.errors import MalformedBatch, TooLarge

METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True)
class NpzLimits:
    max_bytes: int = 256 * 1024 * 1024  # inflated, all arrays together
    max_members: int = 8
    dtypes: frozenset[str] = frozenset("biuf")  # numpy kinds: bool, int, uint, float


class NpzReader:
    """An npz's members, checked from the zip directory; `header()` before `array()` lets a caller refuse a
    declared shape before anything is inflated.

    Raises (from each method):
        MalformedBatch: not a zip, a member missing, encrypted or compressed with another method, a
            header that does not parse, a structured, object or non-numeric dtype.
        TooLarge: the arrays read declare more than `limits.max_bytes` together.
    """

    def __init__(self, data: bytes, limits: NpzLimits = NpzLimits()) -> None:
        self.limits = limits
        self._budget = limits.max_bytes
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            self._members = {info.filename.removesuffix(".npy"): info for info in self._zip.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise MalformedBatch(f"the body is not a readable .npz: {e}") from e
        if len(self._members) > limits.max_members:
            raise MalformedBatch(f"the npz holds {len(self._members)} members; at most {limits.max_members} are read")

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self._members]
        if missing:
            raise MalformedBatch(f"the npz must hold arrays {list(names)}; it holds {sorted(self._members)}")

    def header(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """The dtype and shape a member declares (nothing inflated beyond its header)."""
        dtype, shape, _ = self._read(name, body=False)
        return dtype, shape

    def array(self, name: str) -> np.ndarray:
        """The member's array, read as far as its header declares."""
        return cast(np.ndarray, self._read(name, body=True)[2])

    def _read(self, name: str, body: bool) -> tuple[np.dtype, tuple[int, ...], bool | np.ndarray]:  # fortran or array
        self.require(name)
        info = self._members[name]
        _check_member(info)
        try:
            with self._zip.open(info) as stream:
                dtype, shape, fortran = _header(stream, name, self.limits)
                if not body:
                    return dtype, shape, fortran
                size = math.prod(shape) * dtype.itemsize
                if size > self._budget:
                    raise TooLarge(f"array {name!r} declares {size:,} bytes {list(shape)}; the limit is "
                                   f"{self.limits.max_bytes:,} bytes, inflated")
                self._budget -= size
                return dtype, shape, _body(stream, dtype, shape, fortran, name)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as e:
            raise MalformedBatch(f"array {name!r} cannot be read: {e}") from e


def _check_member(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise MalformedBatch(f"npz member {info.filename!r} is encrypted")
    if info.compress_type not in METHODS:
        raise MalformedBatch(f"npz member {info.filename!r} uses compression method {info.compress_type}; "
                             "send it stored or deflated (np.savez or np.savez_compressed)")


def _header(stream: IO[bytes], name: str, limits: NpzLimits) -> tuple[np.dtype, tuple[int, ...], bool]:
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version} is not read")
        shape, fortran, dtype = read(stream, max_header_size=10_000)
    except (ValueError, TypeError, SyntaxError, OverflowError) as e:
        raise MalformedBatch(f"array {name!r} has no readable npy header: {e}") from e
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in limits.dtypes:
        raise MalformedBatch(f"array {name!r} has dtype {dtype}; send a plain numeric array")
    if any(d < 0 for d in shape):
        raise MalformedBatch(f"array {name!r} declares shape {list(shape)}")
    return dtype, tuple(shape), bool(fortran)


def _body(stream: IO[bytes], dtype: np.dtype, shape: tuple[int, ...], fortran: bool,
          name: str) -> np.ndarray:
    size = math.prod(shape) * dtype.itemsize
    raw = stream.read(size)
    if len(raw) != size:
        raise MalformedBatch(f"array {name!r} ends after {len(raw)} of its {size} bytes")
    array = np.frombuffer(raw, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)

"""Content-addressed artifacts: put bytes, get them back by sha256, verified on every read.

Any fsspec URL works ("file:///srv/clreg", "memory://x", a bare local path, "s3://bucket/prefix" with s3fs
and credentials from the environment). On a filesystem, writes go to a temporary name and are renamed into
place, so a reader never sees half an artifact; on an object store one PUT is already all or nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from enum import Enum
from typing import cast

import fsspec
from fsspec.core import url_to_fs

from clreg.registry.errors import ArtifactCorrupt, StoreUnavailable
from clreg.registry.findings import Calibration
from clreg.registry.records import ModelVersion, parse

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs"}  # flat namespaces where a PUT is atomic


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Blobs under `<root>/<aa>/<sha256>`; immutable once written."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            fs, root = url_to_fs(url)
        except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs installed
            raise StoreUnavailable(f"artifact store {url!r} cannot be opened: {e}") from e
        self._fs: fsspec.AbstractFileSystem = fs
        self._root = root.rstrip("/")
        self._object_store = bool(set(_protocols(fs)) & OBJECT_STORES)
        try:
            if self._object_store:  # no folders to make; a missing bucket is a wrong URL, never created here
                bucket = self._root.split("/", 1)[0]
                if not self._fs.exists(bucket):
                    raise StoreUnavailable(f"artifact store {url!r}: bucket {bucket!r} does not exist or is not "
                                           "readable with these credentials")
            else:
                self._fs.makedirs(self._root, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"artifact root {url!r} cannot be created: {e}") from e

    def path(self, digest: str) -> str:
        _check_digest(digest)
        return f"{self._root}/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store `data` and return its sha256; storing the same bytes twice is a no-op."""
        digest = sha256(data)
        final = self.path(digest)
        try:
            if self._fs.exists(final):
                return digest
            if self._object_store:  # one PUT is all or nothing: a reader never sees part of an object
                self._fs.pipe_file(final, data)
                return digest
            self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{final}.tmp-{uuid.uuid4().hex}"
            with self._fs.open(tmp, "wb") as f:
                f.write(data)
            self._fs.mv(tmp, final)
        except OSError as e:
            raise StoreUnavailable(f"cannot write artifact {digest}: {e}") from e
        return digest

    def get(self, digest: str) -> bytes:
        """Read an artifact and check its hash; a mismatch is never returned."""
        path = self.path(digest)
        try:
            with self._fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise ArtifactCorrupt(f"artifact {digest} is missing from {self.url}") from e
        except OSError as e:
            raise StoreUnavailable(f"cannot read artifact {digest}: {e}") from e
        actual = sha256(data)
        if actual != digest:
            raise ArtifactCorrupt(f"artifact {digest} is corrupt: its bytes hash to {actual}")
        return cast(bytes, data)

    def exists(self, digest: str) -> bool:
        return bool(self._fs.exists(self.path(digest)))

    def delete(self, digest: str) -> None:
        """Remove an artifact (retention only: versions that still reference it must be archived first)."""
        path = self.path(digest)
        try:
            if self._fs.exists(path):
                self._fs.rm(path)
        except OSError as e:
            raise StoreUnavailable(f"cannot delete artifact {digest}: {e}") from e


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactCorrupt(f"invalid artifact digest {digest!r}")


class Artifact(str, Enum):
    """The names under which a version keeps its artifacts (ModelVersion.artifacts: name -> sha256)."""

    WEIGHTS = "weights"  # safetensors state dict
    EWC = "ewc"  # safetensors: Fisher diagonals and anchors
    BN_BANK = "bn_bank"  # safetensors: each learnt site's BatchNorm state
    REFERENCE = "reference"  # npz: the drift reference's features
    CALIBRATION = "calibration"  # JSON: per-site temperatures (a Calibration record)
    REPLAY = "replay"  # safetensors: the rehearsal memory of sites that allow replay
    SCORES = "scores"  # npz: its logits on every learnt site's held-out set (clreg.scores)


class VersionArtifacts:
    """The one reader of a version's artifacts: verified bytes by name, None where the version has none."""

    def __init__(self, store: ArtifactStore, version: ModelVersion) -> None:
        self._store = store
        self.version = version

    def has(self, name: Artifact) -> bool:
        return name.value in self.version.artifacts

    def get(self, name: Artifact) -> bytes:
        """The artifact's bytes (sha256 checked); ArtifactCorrupt when the version has no such artifact."""
        digest = self.version.artifacts.get(name.value)
        if digest is None:
            raise ArtifactCorrupt(f"version {self.version.number} of {self.version.model} has no {name.value} artifact")
        return self._store.get(digest)

    def optional(self, name: Artifact) -> bytes | None:
        return self.get(name) if self.has(name) else None

    def calibration(self) -> Calibration | None:
        """Per-site temperatures; None for versions without them."""
        raw = self.optional(Artifact.CALIBRATION)
        return parse(Calibration, raw) if raw is not None else None


def version_calibration(store: ArtifactStore, version: ModelVersion) -> Calibration | None:
    """A version's per-site temperatures (its verified `calibration` artifact); None for versions without one."""
    return VersionArtifacts(store, version).calibration()

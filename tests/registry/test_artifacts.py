"""Content-addressed artifacts on local and in-memory fsspec file systems."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.artifacts import ArtifactStore, sha256
from registry.errors import ArtifactCorrupt


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_put_get_roundtrip_and_dedup(tmp_path: Path, kind: str) -> None:
    store = ArtifactStore(str(tmp_path) if kind == "local" else f"memory://clreg-{tmp_path.name}")
    digest = store.put(b"weights")
    assert digest == sha256(b"weights")
    assert store.put(b"weights") == digest
    assert store.get(digest) == b"weights"


def test_flipped_byte_is_detected_on_load(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    digest = store.put(b"\x00" * 100)
    path = Path(store.path(digest))
    data = bytearray(path.read_bytes())
    data[50] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        store.get(digest)


def test_missing_artifact_and_bad_digest(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.get("0" * 64)
    with pytest.raises(ArtifactCorrupt, match="invalid"):
        store.get("../../etc/passwd")


def test_no_temporary_files_left(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.put(b"abc")
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]

"""Content-addressed artifacts on local and in-memory fsspec file systems."""

from __future__ import annotations

from pathlib import Path

import pytest

from clreg.registry.artifacts import ArtifactStore, sha256
from clreg.registry.errors import ArtifactCorrupt


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


def test_a_version_reads_its_artifacts_by_name_only(tmp_path: Path) -> None:
    from clreg.registry.artifacts import Artifact, VersionArtifacts
    from clreg.registry.findings import Calibration, SiteCalibration
    from clreg.registry.records import Lineage, ModelVersion

    store = ArtifactStore(str(tmp_path))
    fit = SiteCalibration(temperature=1.5, samples=10, ece=0.1, ece_calibrated=0.05, nll=0.5, nll_calibrated=0.4)
    calibration = Calibration(model="m", sites={"a": fit}, pooled=fit)
    artifacts = {Artifact.WEIGHTS: store.put(b"weights"),
                 Artifact.CALIBRATION: store.put(calibration.model_dump_json().encode())}
    version = ModelVersion(model="m", number=3, lineage=Lineage(), artifacts=artifacts)
    assert version.model_dump()["artifacts"].keys() == {"weights", "calibration"}  # stored under the plain names
    stored = VersionArtifacts(store, version)
    assert stored.get(Artifact.WEIGHTS) == b"weights" and stored.calibration() == calibration
    assert stored.optional(Artifact.BN_BANK) is None and not stored.has(Artifact.REPLAY)
    with pytest.raises(ArtifactCorrupt, match="version 3 of m has no reference artifact"):
        stored.get(Artifact.REFERENCE)

"""Artifacts on S3-compatible storage (moto's server in a child process, s3fs): content-addressed and verified
as on disk, one PUT per artifact, and a wrong bucket refused with its name instead of created."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from clreg.registry.artifacts import ArtifactStore, sha256
from clreg.registry.errors import ArtifactCorrupt, StoreUnavailable
from tests import s3server

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3server.moto_server() as url:
        saved = dict(os.environ)
        os.environ.update(s3server.environment(url))
        try:
            yield url
        finally:
            os.environ.clear()
            os.environ.update(saved)


def test_artifacts_round_trip_through_the_bucket_and_corruption_is_caught(endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="clreg-art")
    store = ArtifactStore("s3://clreg-art/prod")
    digest = store.put(b"weights v1")
    assert digest == sha256(b"weights v1") and store.get(digest) == b"weights v1"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="clreg-art")["Contents"]]
    assert keys == [f"prod/{digest[:2]}/{digest}"]  # one object, no temporary left behind
    client.put_object(Bucket="clreg-art", Key=keys[0], Body=b"tampered")
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        ArtifactStore("s3://clreg-art/prod").get(digest)


def test_a_wrong_bucket_is_refused_by_name_and_not_created(endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint)
    with pytest.raises(StoreUnavailable, match="'no-such-bucket'"):
        ArtifactStore("s3://no-such-bucket/prod")
    assert "no-such-bucket" not in [b["Name"] for b in client.list_buckets()["Buckets"]]

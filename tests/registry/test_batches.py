"""Batch validation, deterministic splits and ingest atomicity on a real Redis."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest, parse_batch, split
from clreg.registry.errors import BatchMismatch, MalformedBatch, TooLarge
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import InputSpec, Model
from clreg.registry.store import RedisRegistry, StoreConfig

SPEC = InputSpec(channels=1, height=8, width=8, classes=3)
ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _declared(shape: tuple[int, ...], extra: tuple[int, ...] = ()) -> bytes:
    """An npz whose x header declares `shape` (+ `extra` dimensions) over 64 bytes of data: a bomb's header."""
    x = io.BytesIO()
    np.lib.format.write_array_header_1_0(x, {"descr": "|u1", "fortran_order": False, "shape": shape + extra})
    x.write(bytes(64))
    y = io.BytesIO()
    np.save(y, np.zeros(4, int))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("x.npy", x.getvalue())
        archive.writestr("y.npy", y.getvalue())
    return out.getvalue()


def _method(data: bytes, method: int) -> bytes:
    """The same zip with every member's compression method field rewritten (e.g. 9: deflate64)."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset:at + offset + 2] = method.to_bytes(2, "little")
            at = raw.find(signature, at + 4)
    return bytes(raw)


def _encrypted(data: bytes) -> bytes:
    """The same zip with the encryption flag set on every member."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset] |= 0x1
            at = raw.find(signature, at + 4)
    return bytes(raw)


def _good(n: int = 30, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return _npz(x=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, n))


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"not an npz", MalformedBatch, "readable .npz"),
        (_npz(x=np.zeros((4, 8, 8), np.uint8)), MalformedBatch, r"arrays \['x', 'y'\]"),
        (_npz(x=np.zeros((4, 9, 8), np.uint8), y=np.zeros(4, int)), BatchMismatch, "shape"),
        (_npz(x=np.full((4, 8, 8), np.nan, np.float32), y=np.zeros(4, int)), BatchMismatch, "NaN"),
        (_npz(x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2, 3])), BatchMismatch, "outside 0..2"),
        (_npz(x=np.zeros((4, 8, 8), np.float64), y=np.zeros(4, int)), BatchMismatch, "dtype"),
        (_npz(x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(3, int)), BatchMismatch, "like x"),
        (_npz(x=np.array([object()] * 4, dtype=object), y=np.zeros(4, int)), MalformedBatch, "plain numeric"),
        (_npz(x=np.zeros(4, dtype=[("a", "u1", (8, 8))]), y=np.zeros(4, int)), MalformedBatch, "plain numeric"),
        (_declared((10**9, 8, 8)), TooLarge, "at most 10000"),
        (_declared((4, 8, 8), extra=(10**12,)), BatchMismatch, "shape"),
        (_method(_good(), 9), MalformedBatch, "compression method 9"),
        (_encrypted(_good()), MalformedBatch, "encrypted"),
    ],
)
def test_bad_batches_are_refused_with_a_message(payload: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        parse_batch(payload, SPEC, Limits())


def test_split_is_stratified_and_deterministic() -> None:
    y = np.repeat([0, 1, 2], [10, 20, 30])
    train, held = split(y, "ab" * 32, 0.3)
    assert split(y, "ab" * 32, 0.3) == (train, held)
    assert sorted(train + held) == list(range(60))
    assert np.bincount(y[held]).tolist() == [3, 6, 9]
    assert split(y, "cd" * 32, 0.3)[1] != held


def test_ingest_stores_once_and_refusal_leaves_nothing(registry: RedisRegistry, tmp_path: Path) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    store, queue, log = ArtifactStore(str(tmp_path)), IngestQueue(registry), EventLog(registry)
    queue.ensure_group()
    keys_before = set(registry.r.scan_iter())  # every node of a cluster
    with pytest.raises(BatchMismatch):
        ingest(registry, store, queue, log, "m", "s", _npz(x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 7])),
               Limits())
    assert set(registry.r.scan_iter()) == keys_before and not list(tmp_path.rglob("*"))
    batch, new = ingest(registry, store, queue, log, "m", "s", _good(), Limits())
    again, new_again = ingest(registry, store, queue, log, "m", "s", _good(), Limits())
    assert new and not new_again and again.id == batch.id
    assert len(queue.read(block_ms=10)) == 1
    assert [e.kind for e in log.read("m")] == ["batch.received"]
    assert sum(batch.class_counts) == 30 and len(batch.train_index) + len(batch.heldout_index) == 30
    y2 = np.array([0] * 9 + [1])
    ingest(registry, store, queue, log, "m", "s", _npz(x=np.zeros((10, 8, 8), np.uint8), y=y2), Limits())
    counts = registry.batches.site_counts("m", ["s", "never-pushed"])
    assert list(counts) == ["s"]  # the duplicate push was not counted, a silent site has no entry
    expected = [a + b for a, b in zip(batch.class_counts, [9, 1, 0], strict=True)]
    assert (counts["s"].batches, counts["s"].samples, counts["s"].class_counts) == (2, 40, expected)
    assert counts["s"].prevalence == pytest.approx([n / 40 for n in expected])


def test_the_same_bytes_for_another_model_or_site_are_a_batch_of_their_own(registry: RedisRegistry,
                                                                            tmp_path: Path) -> None:
    for name in ("m", "m2"):
        registry.create_model(Model(name=name, factory="clreg.learner.models:small_cnn", input=SPEC))
    store, queue, log = ArtifactStore(str(tmp_path)), IngestQueue(registry), EventLog(registry)
    queue.ensure_group()
    first, _ = ingest(registry, store, queue, log, "m", "s", _good(), Limits())
    other_model, new_model = ingest(registry, store, queue, log, "m2", "s", _good(), Limits())
    other_site, new_site = ingest(registry, store, queue, log, "m", "s2", _good(), Limits())
    assert new_model and new_site and len({first.id, other_model.id, other_site.id}) == 3
    assert (other_model.model, other_site.site) == ("m2", "s2")
    assert first.artifact == other_model.artifact == other_site.artifact  # the bytes are stored once
    assert len(queue.read(block_ms=10)) == 3


def test_on_a_cluster_a_push_retried_after_its_writer_died_finishes_the_batch(registry: RedisRegistry, backend: str,
                                                                            tmp_path: Path) -> None:
    """On a cluster a batch is written in steps, its record last; a writer that died before the record (here:
    the record deleted) leaves a batch that the same push, retried, finishes: counted once, its event once."""
    if backend != "cluster":
        pytest.skip("on one Redis a batch is one transaction: there is no half-written batch")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    store, queue, log = ArtifactStore(str(tmp_path)), IngestQueue(registry), EventLog(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, store, queue, log, "m", "s", _good(), Limits())
    registry.r.delete(registry.key("batch", batch.id))
    again, new = ingest(registry, store, queue, log, "m", "s", _good(), Limits())
    assert not new and again == registry.batches.get(batch.id)
    assert again.model_dump(exclude={"created_at"}) == batch.model_dump(exclude={"created_at"})  # the retry's record
    assert registry.batches.state(batch.id).status.value == "received"
    assert registry.batches.site_counts("m", ["s"])["s"].batches == 1  # counted once
    assert [e.kind for e in log.read("m")] == ["batch.received"]
    assert {b for _, _, b in queue.read(block_ms=10)} == {batch.id}  # queued (twice: the daemon skips a repeat)
    assert [b.id for b in registry.batches.of_model("m")] == [batch.id]


WRITES = frozenset({"SET", "HSET", "HINCRBY", "HINCRBYFLOAT", "ZADD", "SADD", "XADD", "INCR", "INCRBY", "DEL",
                    "EXPIRE", "LPUSH", "RPUSH"})


def test_on_one_redis_every_write_of_a_push_is_inside_its_one_transaction(redis_url: str, tmp_path: Path) -> None:
    """What the server saw (MONITOR) while a batch was ingested: its writes all lie between one MULTI and its EXEC,
    so a gateway killed at any instant of a push leaves the whole batch or nothing (and the push, retried, is
    answered like the first: test_ingest_stores_once_and_refusal_leaves_nothing)."""
    registry = RedisRegistry(StoreConfig(url=redis_url, prefix="clreg-test-monitor"))  # one Redis: no cluster run
    for key in registry.r.scan_iter(match="clreg-test-monitor:*"):
        registry.r.delete(key)
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    store, queue, log = ArtifactStore(str(tmp_path)), IngestQueue(registry), EventLog(registry)
    queue.ensure_group()
    seen: list[str] = []
    with registry.r.monitor() as monitor:
        listening = iter(monitor.listen())
        ingest(registry, store, queue, log, "m", "s", _good(), Limits())
        registry.r.echo("end-of-push")
        while not (command := next(listening)["command"]).upper().startswith("ECHO"):
            seen.append(command.split()[0].upper())
    transaction = [i for i, c in enumerate(seen) if c in ("MULTI", "EXEC")]
    writes = [i for i, c in enumerate(seen) if c in WRITES]
    assert len(transaction) == 2 and "XADD" in seen[transaction[0]:transaction[1]], seen
    assert writes and all(transaction[0] < i < transaction[1] for i in writes), seen

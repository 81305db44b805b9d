"""The reads pipeline steps share: a version's learnt batches are walked once per version, and stay right for a
model made again under the same name."""

from __future__ import annotations

from pathlib import Path

from clreg.context import Stores
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry, StoreConfig


class Counting(RedisRegistry):
    """A registry that counts version reads."""

    reads = 0

    def get_version(self, model: str, number: int) -> ModelVersion:
        self.reads += 1
        return super().get_version(model, number)


def _chain(registry: RedisRegistry, batches: list[list[str]]) -> list[ModelVersion]:
    """A model whose versions learnt `batches`, each the child of the one before."""
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=2)))
    made: list[ModelVersion] = []
    for ids in batches:
        lineage = Lineage(parent=made[-1].number if made else None, batch_ids=ids, sites=["a"])
        made.append(registry.register_version(ModelVersion(model="m", number=1, lineage=lineage)))
    return made


def test_a_versions_learnt_batches_are_walked_once(registry: RedisRegistry, store_cfg: StoreConfig,
                                                  tmp_path: Path) -> None:
    counting = Counting(store_cfg)
    stores = Stores(counting, ArtifactStore(str(tmp_path)), EventLog(counting))
    versions = _chain(counting, [["b1"], ["b2", "b3"], ["b4"]])
    assert stores.learnt_batches(versions[2]) == ["b1", "b2", "b3", "b4"] and counting.reads == 2
    assert stores.learnt_batches(versions[1]) == ["b1", "b2", "b3"] and counting.reads == 2  # walked already
    child = counting.register_version(ModelVersion(model="m", number=1, lineage=Lineage(
        parent=3, batch_ids=["b5"], sites=["a"])))
    assert stores.learnt_batches(child) == ["b1", "b2", "b3", "b4", "b5"] and counting.reads == 3  # its parent only
    assert stores.learnt_batches(None) == []
    counting.r.flushdb()  # the model made again: its versions have the same numbers and other batches
    again = _chain(counting, [["c1"], ["c2"]])
    assert stores.learnt_batches(again[1]) == ["c1", "c2"]

"""The first version of a model registered with initial weights trains from them; later ones from production."""

from __future__ import annotations

from pathlib import Path

from clreg.context import Stores
from clreg.learning import parent_artifacts
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry


def test_the_first_update_starts_from_the_models_initial_weights(registry: RedisRegistry, tmp_path: Path) -> None:
    stores = Stores(registry=registry, artifacts=ArtifactStore(str(tmp_path)), events=EventLog(registry))
    initial = stores.artifacts.put(b"initial weights")
    spec = InputSpec(channels=1, height=32, width=32, classes=2)
    model = Model(name="m", factory="clreg.learner.models:resnet18", input=spec, weights=initial,
                  weights_source=stores.artifacts.put(b"the uploaded file"))
    assert parent_artifacts(stores, model, None) == (b"initial weights", None, None)
    assert parent_artifacts(stores, model.model_copy(update={"weights": None}), None) == (None, None, None)
    production = ModelVersion(model="m", number=1, lineage=Lineage(),
                              artifacts={"weights": stores.artifacts.put(b"v1"), "ewc": stores.artifacts.put(b"e1")})
    assert parent_artifacts(stores, model, production) == (b"v1", b"e1", None)

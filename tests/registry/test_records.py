"""Records carry an explicit schema version; a record newer than this code is refused with a clear error."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from clreg.registry.errors import UnreadableRecord
from clreg.registry.records import SCHEMA_VERSION, InputSpec, Lineage, Model, ModelVersion, parse
from clreg.registry.store import RedisRegistry

SPEC = InputSpec(channels=1, height=16, width=16, classes=10)


def test_every_record_states_its_schema_version() -> None:
    body = json.loads(ModelVersion(model="m", number=1, lineage=Lineage()).model_dump_json())
    assert body["schema_version"] == SCHEMA_VERSION == 1
    assert body["lineage"]["schema_version"] == SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_clear_error() -> None:
    body = json.loads(Model(name="m", factory="a:b", input=SPEC).model_dump_json())
    body.update(schema_version=SCHEMA_VERSION + 1, field_from_the_future=1)
    with pytest.raises(UnreadableRecord, match=r"Model has schema_version 2, newer than the 1 this clreg reads; "
                                               r"upgrade clreg"):
        parse(Model, json.dumps(body))
    nested = json.loads(Model(name="m", factory="a:b", input=SPEC).model_dump_json())
    nested["input"]["schema_version"] = 7
    with pytest.raises(UnreadableRecord, match=r"InputSpec has schema_version 7.*\(at input\)"):
        parse(Model, json.dumps(nested))
    with pytest.raises(ValidationError, match="schema_version 2"):
        Model(name="m", factory="a:b", input=SPEC, schema_version=2)


def test_store_refuses_a_newer_record_it_finds(registry: RedisRegistry) -> None:
    registry.create_model(Model(name="m", factory="a:b", input=SPEC))
    registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    key = registry.key("model", "m", "v", 1)
    body = json.loads(registry.r.get(key))
    registry.r.set(key, json.dumps({**body, "schema_version": 2}))
    with pytest.raises(UnreadableRecord, match="ModelVersion has schema_version 2"):
        registry.get_version("m", 1)
    with pytest.raises(UnreadableRecord, match="upgrade clreg"):
        registry.list_versions("m")


def test_damaged_json_is_unreadable_not_half_read(registry: RedisRegistry) -> None:
    registry.r.set(registry.key("model", "m"), '{"name": "m", "factory": ')
    with pytest.raises(UnreadableRecord, match="stored Model cannot be read"):
        registry.get_model("m")


def test_a_factory_stored_before_the_namespace_move_reads_as_its_new_name(registry: RedisRegistry) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    key = registry.key("model", "m")
    body = json.loads(registry.r.get(key))
    registry.r.set(key, json.dumps({**body, "factory": "learner.models:small_cnn"}))  # as 0.1 wrote it
    assert registry.get_model("m").factory == "clreg.learner.models:small_cnn"
    assert Model(name="m", factory="tests.learner.factories:dies", input=SPEC).factory == "tests.learner.factories:dies"

"""Settings come from CLREG_ variables, nested with __, and reach components as sub-configs."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from clreg.settings import Settings, unknown_variables


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CLREG_HOME", str(tmp_path))
    monkeypatch.setenv("CLREG_GATE__TOLERANCE", "0.1")
    monkeypatch.setenv("CLREG_TRAIN__EPOCHS", "3")
    monkeypatch.setenv("CLREG_REDIS__URL", "redis://10.0.0.5:6380/2")
    s = Settings()
    assert (s.gate.tolerance, s.train.epochs, s.redis.url) == (0.1, 3, "redis://10.0.0.5:6380/2")
    assert s.artifacts() == str((tmp_path / "artifacts").resolve())
    assert s.serve.host == "127.0.0.1"  # loopback unless configured


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLREG_GATE__TOLERANCE", "2")
    with pytest.raises(ValidationError, match="tolerance"):
        Settings()


def _models(cls: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """Every settings model reachable from `cls` through its fields."""
    if cls not in seen:
        seen.add(cls)
        for field in cls.model_fields.values():
            for t in _annotation_types(field.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    _models(t, seen)
    return seen


def _annotation_types(annotation: object) -> list[object]:
    return [annotation, *(t for arg in typing.get_args(annotation) for t in _annotation_types(arg))]


def test_every_settings_model_refuses_unknown_fields() -> None:
    models = _models(Settings, set())
    assert {m.__name__ for m in models} >= {"ServeSettings", "RedisSettings", "GateConfig", "TrainConfig",
                                             "RetentionConfig", "InputLogConfig", "DriftConfig"}
    assert [m.__name__ for m in models if m.model_config.get("extra") != "forbid"] == []


def test_a_misspelt_nested_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLREG_GATE__TOLERANSE", "0.1")
    with pytest.raises(ValidationError, match="gate.toleranse"):
        Settings()


def test_a_misspelt_top_level_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLREG_GAET__TOLERANCE", "0.1")
    monkeypatch.setenv("CLREG_HOEM", "/tmp/x")
    with pytest.raises(ValidationError, match="unknown setting CLREG_GAET__TOLERANCE, CLREG_HOEM"):
        Settings()


def test_client_and_test_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLREG_TOKEN", "CLREG_SITE_TOKEN", "CLREG_TEST_REDIS_URL"):
        monkeypatch.setenv(name, "x")
    assert unknown_variables(os.environ) == []
    assert Settings().gate.tolerance == 0.05


@pytest.mark.parametrize(("name", "value", "line"), [
    ("CLREG_GATE__TOLERANCE", "2", "error CLREG_GATE__TOLERANCE: Input should be less than or equal to 1"),
    ("CLREG_GATE__TOLERANSE", "0.1", "error CLREG_GATE__TOLERANSE: no such setting"),
    ("CLREG_HOEM", "/tmp", "error unknown setting CLREG_HOEM; settings are CLREG_ followed by one of HOME, "),
])
def test_the_cli_names_a_bad_variable_in_one_line(name: str, value: str, line: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLREG_")} | {name: value}
    done = subprocess.run([sys.executable, "-c", "from clreg.cli import main; main()", "status"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout.startswith(line) and done.stdout.count("\n") == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_reports_a_redis_that_does_not_answer_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLREG_")} | {
        "CLREG_REDIS__URL": "redis://127.0.0.1:1/0", "CLREG_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "from clreg.cli import main; main()", "daemon"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "Redis is unreachable" in lines[0] and "CLREG_REDIS__URL" in lines[0], done.stdout
    assert "Traceback" not in done.stderr


# Values tried for a leaf, in order, until one is accepted and differs from the default (per annotation type)
TRIES: dict[object, list[str]] = {
    bool: ["true", "false"],
    int: ["7", "3", "1", "2", "4096"],
    float: ["0.25", "0.5", "0.75", "2.5", "0.9"],
    str: ["probe", "redis://10.9.8.7:6390/3", "0" * 64, "http://10.9.8.7:9/", "10.9.8.7:26379"],
    Path: ["/tmp/clreg-probe"],
}


# Leaves that are valid only with another setting beside them
WITH = {"CLREG_REDIS__SENTINELS": ("CLREG_REDIS__SENTINEL_MASTER", "primary"),
        "CLREG_REDIS__CLUSTER": ("CLREG_REDIS__URL", "redis://10.9.8.7:7000/0")}


def _leaves(cls: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(path, annotation) of every leaf setting below `cls` (a model that may be None is walked into)."""
    found = []
    for name, field in cls.model_fields.items():
        models = [t for t in _annotation_types(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        found += _leaves(models[0], (*path, name)) if models else [((*path, name), field.annotation)]
    return found


def _tries(annotation: object) -> list[str]:
    """Environment values to try for a leaf: its Literal choices, JSON for collections, else by type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in args]
    if typing.get_origin(annotation) in (tuple, frozenset, set, list):
        return ['["after_receive"]', '["probe.example"]', '[{"epochs": 2}]', '["rejected"]']
    if typing.get_origin(annotation) is dict:
        return ['{"probe": 1}']
    return [v for t in [annotation, *args] for v in TRIES.get(t, [])]


def _at(obj: object, path: tuple[str, ...]) -> object:
    for name in path:
        obj = getattr(obj, name, None)
    return obj


def test_every_leaf_setting_is_read_from_its_one_variable_and_reaches_serving_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each leaf of the settings tree, set alone through CLREG_<PATH> to a value other than its default, is read
    back at that path; a serving leaf is also what the replicas and the gateway are handed (nothing overwrites
    it after parsing). A leaf no tried value could set is named."""
    from clreg.embedded import serving_config
    from clreg.registry.connection import StoreConfig

    default, unset = Settings(), []
    for path, annotation in _leaves(Settings):
        variable = "CLREG_" + "__".join(path).upper()
        if variable in WITH:
            monkeypatch.setenv(*WITH[variable])
        for value in _tries(annotation):
            monkeypatch.setenv(variable, value)
            try:
                read = Settings()
            except ValidationError:
                continue
            finally:
                monkeypatch.delenv(variable)
            if _at(read, path) != _at(default, path):
                break
        else:
            unset.append(variable)
        if variable in WITH:
            monkeypatch.delenv(WITH[variable][0])
        if variable in unset:
            continue
        if path[0] == "serve" and path[1:] not in (("admin_token_sha256",), ("ops_token_sha256",)):
            assert _at(serving_config(read, StoreConfig(), None), path[1:]) == _at(read, path), variable
    assert unset == [], unset
    assert len(_leaves(Settings)) > 100

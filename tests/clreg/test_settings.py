"""Settings come from CLREG_ variables, nested with __, and reach components as sub-configs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clreg.settings import Settings


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

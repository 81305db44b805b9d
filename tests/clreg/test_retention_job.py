"""The daemon's retention job: off by default, configured from CLREG_RETENTION__*, archiving when it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from clreg import context
from clreg.daemon import Daemon
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import RedisSettings, Settings


def _settings(tmp_path: Path, store_cfg: StoreConfig) -> Settings:
    return Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix))


def test_retention_is_off_by_default(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> None:
    settings = _settings(tmp_path, store_cfg)
    assert not settings.retention.enabled
    daemon = Daemon(context.build(settings, store_cfg, "http://127.0.0.1:0"))
    assert daemon.scheduler.get_job("retention") is None and daemon.scheduler.get_job("flush-pending")


def test_enabled_job_archives_by_the_configured_policy(registry: RedisRegistry, store_cfg: StoreConfig,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLREG_RETENTION__ENABLED", "true")
    monkeypatch.setenv("CLREG_RETENTION__INTERVAL_S", "60")
    monkeypatch.setenv("CLREG_RETENTION__POLICY__KEEP_LAST", "2")
    monkeypatch.setenv("CLREG_RETENTION__POLICY__MIN_AGE_S", "0")
    settings = _settings(tmp_path, store_cfg)
    assert (settings.retention.policy.keep_last, settings.retention.policy.protect_promotions) == (2, 10)
    daemon = Daemon(context.build(settings, store_cfg, "http://127.0.0.1:0"))
    assert daemon.scheduler.get_job("retention").trigger.interval.total_seconds() == 60
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    for _ in range(5):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    registry.promote("m", 1, who="ops", reason="first")
    daemon.apply_retention()
    assert [registry.status("m", n) for n in range(1, 6)] == [
        VersionStatus.PRODUCTION, VersionStatus.ARCHIVED, VersionStatus.ARCHIVED, VersionStatus.CANDIDATE,
        VersionStatus.CANDIDATE]

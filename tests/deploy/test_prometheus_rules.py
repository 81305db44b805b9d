"""The shipped Prometheus alert rules: valid, unit-tested by promtool, and naming only metrics clreg exports.

promtool comes with Debian's `prometheus` package, which .ci/run installs (and then sets
CLREG_TEST_REQUIRE_PROMTOOL=1, so that a missing promtool fails CI instead of skipping).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.status import StuckRule
from clreg.registry.store import RedisRegistry
from clreg.serving import metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CLREG_TEST_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is missing: apt-get install prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


@pytest.mark.parametrize("command", [["check", "rules", "clreg-alerts.yml"],
                                     ["test", "rules", "clreg-alerts.test.yml"]])
def test_promtool_passes(command: list[str]) -> None:
    done = subprocess.run([_promtool(), *command], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((RULES / "clreg-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES / "clreg-alerts.test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert len(alerts) >= 9 and alerts == fired


def test_rules_name_only_metrics_clreg_exports(registry: RedisRegistry, tmp_path: Path) -> None:
    collected, _ = metrics.build(registry, StuckRule(), InputLog(registry.cfg, InputLogConfig()),
                                 ArtifactStore(str(tmp_path)))
    text = generate_latest(collected).decode()
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    names = {name for name, _ in exported} | {f"{name}_total" for name, kind in exported if kind == "counter"}
    used = set(re.findall(r"\bclreg_[a-z_]+", (RULES / "clreg-alerts.yml").read_text()))
    assert used and used <= names, sorted(used - names)

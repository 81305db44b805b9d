"""The catalogue of event kinds (what webhook subscriptions may name) covers every kind the code records."""

from __future__ import annotations

import re
from pathlib import Path

from clreg.registry.events import ALERT_KINDS, EVENT_KINDS

ROOT = Path(__file__).resolve().parents[2]
KIND = re.compile(r"""["']((?:batch|drift|update|gate|alias|serving|retention|site|shadow)\.[a-z_]+)["']""")


def test_every_kind_the_code_records_is_catalogued() -> None:
    found = {m for pkg in ("clreg", "registry", "serving", "monitor", "learner")
             for path in (ROOT / pkg).rglob("*.py") for m in KIND.findall(path.read_text())}
    assert {"batch.received", "alias.moved", "serving.failed", "gate.failed"} <= found  # the scan sees the code
    assert found <= EVENT_KINDS, sorted(found - EVENT_KINDS)
    assert ALERT_KINDS <= EVENT_KINDS

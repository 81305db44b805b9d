"""The catalogue of event kinds (what webhook subscriptions may name) covers every kind the code records; the
event, alert and ingest streams on a real Redis (and on a Redis Cluster, where a model's events share its slot)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from clreg.registry.events import ALERT_KINDS, EVENT_KINDS, EventLog, IngestQueue
from clreg.registry.store import RedisRegistry

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = "batch|drift|update|gate|alias|serving|retention|site|shadow|approval|locked|protocol|canary"
KIND = re.compile(rf"""["']((?:{FAMILIES})\.[a-z_]+)["']""")
ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def test_every_kind_the_code_records_is_catalogued() -> None:
    found = {m for pkg in ("clreg", "registry", "serving", "monitor", "learner")
             for path in (ROOT / pkg).rglob("*.py") for m in KIND.findall(path.read_text())}
    assert {"batch.received", "alias.moved", "serving.failed", "gate.failed"} <= found  # the scan sees the code
    assert found <= EVENT_KINDS, sorted(found - EVENT_KINDS)
    assert ALERT_KINDS <= EVENT_KINDS


def test_events_of_each_model_and_alerts_of_all(registry: RedisRegistry) -> None:
    log = EventLog(registry)
    first = log.append("a", "batch.received", batch="x")
    log.append("b", "drift.alert", site="s1")
    log.append("a", "gate.failed", version=2, site="s2")
    assert [e.kind for e in log.read("a")] == ["batch.received", "gate.failed"]
    assert [e.kind for e in log.after("a", first.id)] == ["gate.failed"]
    assert [e.kind for e in log.latest("a", count=1)] == ["gate.failed"]
    assert [(e.model, e.kind) for e in log.alerts()] == [("b", "drift.alert"), ("a", "gate.failed")]
    assert [e.model for e in log.alerts(model="a")] == ["a"] and [e.kind for e in log.alerts(site="s1")] == [
        "drift.alert"]
    assert log.read("a", since=time.time() + 60) == []


def test_a_dead_consumers_entries_are_claimed_and_the_backlog_counts_them(registry: RedisRegistry) -> None:
    dead, alive = IngestQueue(registry, "dead"), IngestQueue(registry, "alive")
    assert dead.backlog() == 0
    dead.ensure_group()
    dead.ensure_group()  # a second daemon's start: the group is there already
    for i in range(3):
        dead.push("m", f"{i:064x}")
    assert len(dead.read(block_ms=10)) == 3 and dead.holders() == {"dead": 3} and dead.backlog() == 3
    claimed = alive.claim_idle(min_idle_s=0)
    assert [b for _, _, b in claimed] == [f"{i:064x}" for i in range(3)] and alive.touch() == 3
    for entry_id, _, _ in claimed:
        alive.ack(entry_id)
    assert alive.backlog() == 0 and alive.read(pending=True) == []

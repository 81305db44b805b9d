"""/metrics content read from a real Redis: the figures the shipped alert rules use, and Redis being away."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.connection import StoreConfig
from clreg.registry.events import EventLog
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.records import Event, InputSpec, Lineage, Model, ModelVersion
from clreg.registry.status import StuckRule
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import Delivery, DeliveryStatus, WebhookStore, new_subscription
from clreg.serving import metrics
from clreg.serving.metrics import gate_failures_in_a_row

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: RedisRegistry, artifacts: ArtifactStore) -> Samples:
    collected, _ = metrics.build(registry, StuckRule(), InputLog(registry.cfg, InputLogConfig()),
                                 artifacts)
    text = generate_latest(collected).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_alert_rule_inputs_are_exported(registry: RedisRegistry, tmp_path: Path) -> None:
    registry.create_model(Model(name="cnn", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    events = EventLog(registry)
    for kind in ("gate.failed", "gate.passed", "gate.failed", "drift.checked", "gate.failed"):
        events.append("cnn", kind, version=1)
    version = registry.register_version(ModelVersion(model="cnn", number=1, lineage=Lineage()))
    change = registry.promote("cnn", version.number, who="test", reason="first")
    store = WebhookStore(registry)
    sub = store.add(new_subscription("http://127.0.0.1/x", ["*"], None))

    event = events.latest("cnn", 1)[0]
    store.fan_out("cnn", event.id, [Delivery(id="d1", subscription=sub.id, url=sub.url, event=event),
                                    Delivery(id="d2", subscription=sub.id, url=sub.url, event=event)])
    store.save(Delivery(id="d1", subscription=sub.id, url=sub.url, event=event, status=DeliveryStatus.FAILED), None)
    found = samples(registry, ArtifactStore(str(tmp_path)))
    assert found[("clreg_redis_up", ())] == 1.0
    assert found[("clreg_gate_failures_in_a_row", (("model", "cnn"),))] == 2.0
    assert found[("clreg_last_promotion_timestamp_seconds", (("model", "cnn"),))] == change.at
    assert found[("clreg_production_version", (("model", "cnn"),))] == 1.0
    assert found[("clreg_webhook_deliveries_total", (("outcome", "failed"),))] == 1.0
    assert found[("clreg_webhook_deliveries_total", (("outcome", "delivered"),))] == 0.0
    assert found[("clreg_webhook_deliveries_pending", ())] == 1.0
    assert found[("clreg_alert_events_total", (("kind", "gate.failed"), ("model", "cnn"), ("site", "")))] == 3.0


def test_site_accuracy_is_estimated_from_served_answers_beside_its_validation(registry: RedisRegistry,
                                                                             tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    registry.create_model(Model(name="cnn", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    fit = SiteCalibration(temperature=1.0, samples=80, ece=0.1, ece_calibrated=0.05, nll=0.3, nll_calibrated=0.3,
                          accuracy=0.9, accuracy_interval=(0.83, 0.96))
    cal = Calibration(model="cnn", sites={"a": fit}, pooled=fit)
    version = registry.register_version(ModelVersion(model="cnn", number=1, lineage=Lineage(sites=["a"]), artifacts={
        "calibration": store.put(cal.model_dump_json().encode())}))
    registry.promote("cnn", version.number, who="test", reason="first")
    inputs = InputLog(registry.cfg, InputLogConfig(cap=10))
    inputs.record_confidence("cnn", "a", np.array([0.9, 0.7]))
    inputs.record_confidence("cnn", "b", np.full(14, 0.5))  # a site the version never learnt: no validation
    found = samples(registry, store)
    assert found[("clreg_site_estimated_accuracy", (("model", "cnn"), ("site", "a")))] == 0.8
    assert found[("clreg_site_estimate_answers", (("model", "cnn"), ("site", "a")))] == 2
    assert found[("clreg_site_estimate_answers", (("model", "cnn"), ("site", "b")))] == 10  # capped to the newest
    assert found[("clreg_site_heldout_accuracy", (("model", "cnn"), ("site", "a")))] == 0.9
    assert ("clreg_site_heldout_accuracy", (("model", "cnn"), ("site", "b"))) not in found
    assert found[("clreg_model_estimate_drop_limit", (("model", "cnn"),))] == 0.05  # the readiness default


def test_gate_failures_count_back_to_the_last_pass() -> None:

    def kinds(*names: str) -> list[Event]:
        return [Event(model="m", kind=k) for k in names]

    assert gate_failures_in_a_row(kinds("gate.failed", "update.started", "gate.failed", "gate.passed",
                                        "gate.failed")) == 2
    assert gate_failures_in_a_row(kinds("gate.passed", "gate.failed")) == 0
    assert gate_failures_in_a_row(kinds("gate.failed", "gate.failed", "gate.failed")) == 3


def test_redis_away_is_a_metric_not_a_failed_scrape(tmp_path: Path) -> None:
    away = RedisRegistry(StoreConfig(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2))
    found = samples(away, ArtifactStore(str(tmp_path)))
    assert found == {("clreg_redis_up", ()): 0.0}

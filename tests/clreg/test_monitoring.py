"""The drift step on a real registry and Evidently: a prevalence change alone is an alert, an unchanged batch is not.

No Ray: the production version is a seeded, untrained small CNN with a reference built the way `learn` builds
one. The alert must reach the alerts stream and a real local webhook receiver, and the report's page must be
stored gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from clreg import monitoring
from clreg.client import npz_bytes
from clreg.context import Context, DriftStep, Stores
from clreg.dispatch import Dispatcher
from clreg.learner.models import build_model, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.monitor.drift import DriftConfig
from clreg.monitor.features import FeatureConfig
from clreg.reference import embed_fn, reference_bytes, reference_sample
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import Batch, InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookConfig, WebhookStore, new_subscription
from clreg.settings import GateConfig, TriggerConfig
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)

MODEL = "cnn"


@pytest.fixture
def ctx(registry: RedisRegistry, tmp_path: Path, hook: Hook) -> Context:
    """A context whose production version 1 learnt 500 base digits; its drift alerts are subscribed to by the hook."""
    stores = Stores(registry=registry, artifacts=ArtifactStore(str(tmp_path / "artifacts")), events=EventLog(registry))
    ctx = Context(stores=stores, train=TrainConfig(), features=FeatureConfig(),
                  drift=DriftStep(DriftConfig(), tmp_path / "workspace", "http://clreg.test"), gate=GateConfig(),
                  trigger=TriggerConfig(), webhook=WebhookConfig(allow=("127.0.0.1",), backoff_s=0.0))
    model = Model(name=MODEL, factory="clreg.learner.models:small_cnn", input=InputSpec(channels=1, height=16, width=16,
                                                                                  classes=10))
    registry.create_model(model)
    WebhookStore(registry).add(new_subscription(url(hook), ["drift.alert"], MODEL))
    base = push(ctx, np.arange(500))
    torch.manual_seed(0)
    net = build_model(model.factory, {}, 1, 16, 16, 10)
    weights = ctx.artifacts.put(weights_to_bytes(net))
    sample = reference_sample(stores, ctx.trigger.reference_samples, 0, model, [base.id])
    reference = ctx.artifacts.put(reference_bytes(embed_fn(stores.module(model, weights)), *sample, ctx.features))
    version = registry.register_version(ModelVersion(model=MODEL, number=1, lineage=Lineage(batch_ids=[base.id]),
                                                     artifacts={"weights": weights, "reference": reference}))
    registry.promote(MODEL, version.number, who="test", reason="fixture")
    return ctx


def push(ctx: Context, rows: np.ndarray, y: np.ndarray | None = None) -> Batch:
    """Base digits by row index (labels replaced when y is given), ingested as a base-site batch."""
    site = digits_sites(seed=0, names=("base",))[0]
    data = npz_bytes(to_uint8(site.x[rows]), site.y[rows] if y is None else y)
    batch, _ = ingest(ctx.registry, ctx.artifacts, IngestQueue(ctx.registry), ctx.events, MODEL, "base", data,
                      Limits())
    return batch


def check(ctx: Context, batch: Batch):  # noqa: ANN201 - DriftReport
    """Check a batch, then run the daemon's webhook job once so that any alert reaches the hook."""
    model = ctx.registry.get_model(MODEL)
    report = monitoring.check_batch(ctx.stores, ctx.drift, model, batch, ctx.stores.production(MODEL))
    Dispatcher(ctx.registry, ctx.webhook).run()
    return report


def test_unchanged_batch_raises_no_alert(ctx: Context, hook: Hook) -> None:
    batch = push(ctx, np.arange(500, 800))
    report = check(ctx, batch)
    assert report is not None and report.drift is False and report.label_drift.drifted is False
    assert (report.id, report.site, report.batch_id, report.reference_version, report.samples) == \
        (f"d-{batch.id[:16]}-v1", "base", batch.id, 1, 300)
    assert ctx.events.alerts(MODEL) == [] and hook.bodies == []
    page = ctx.artifacts.get(report.html_artifact)
    assert gzip.decompress(page).lstrip().startswith(b"<!DOCTYPE html>") and len(page) < 2_000_000


def test_prevalence_change_alone_raises_a_label_shift_alert(ctx: Context, hook: Hook) -> None:
    rows = np.arange(500, 800)
    unchanged = check(ctx, push(ctx, rows))
    # The same images, relabelled so that 70% are zeros: only the label distribution differs.
    y = np.where(np.random.default_rng(1).random(len(rows)) < 0.7, 0, np.arange(len(rows)) % 10)
    report = check(ctx, push(ctx, rows, y.astype(np.int64)))
    assert [c.drifted for c in report.columns] == [c.drifted for c in unchanged.columns]
    assert report.feature_drift is False and report.label_drift.drifted is True and report.drift is True
    [alert] = ctx.events.alerts(MODEL, kind="drift.alert", site="base")
    assert alert.data["report_id"] == report.id and alert.data["signals"] == ["label"]
    assert alert.data["link"] == f"http://clreg.test/v1/drift/{report.id}?format=html"
    [body] = hook.bodies
    event = body["event"]
    assert event["kind"] == "drift.alert" and event["model"] == MODEL and event["data"]["site"] == "base"
    assert event["data"]["batch_id"] == report.batch_id and event["data"]["verdict"] == "drift"
    [recorded] = [e for e in ctx.events.read(MODEL) if e.kind == "drift.alert"]  # the audit trail's entry
    assert event["data"]["signals"] == ["label"] and event["id"] == recorded.id
    assert ctx.events.alerts(MODEL, site="other") == [] and ctx.events.alerts(MODEL, kind="gate.failed") == []

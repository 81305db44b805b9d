"""The scheduled input watch on the real stack: predictions through /v1/predict, then one watch run.

Inputs of the training distribution raise no alert; the same digits through the contrast shift do, on the
alerts stream (site "serving"), at the webhook, in /v1/alerts filters and on /metrics.
"""

from __future__ import annotations

import dataclasses
import time

import httpx
import numpy as np
import pytest

from clreg import context, monitoring, pipeline, watch
from clreg.client import ApiError, Client, npz_bytes
from clreg.context import Context
from clreg.daemon import Daemon
from clreg.dispatch import Dispatcher
from clreg.embedded import Stack
from clreg.learner.estimate import expected_accuracy
from clreg.learner.streams import digits_sites, shift, to_uint8
from clreg.registry.findings import DriftReport
from clreg.registry.inputs import InputLog
from clreg.registry.webhooks import WebhookConfig, WebhookStore, new_subscription
from clreg.settings import WatchConfig
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)

pytestmark = pytest.mark.integration
MODEL = "watched"
WINDOW = 160  # 5 requests of 32 images: the replica records at most 32 per request


def run_watch(ctx: Context) -> list[DriftReport]:
    """One run of the daemon's scheduled job, with the arguments the daemon gives it."""
    return watch.run(ctx.stores, ctx.drift, ctx.watch)


def _predict_all(client: Client, inputs: InputLog, x: np.ndarray, site: str | None = None) -> None:
    """Send x in requests of 32 and wait until the replica's background writer has recorded all of it."""
    for start in range(0, len(x), 32):
        client.predict(x[start:start + 32], MODEL, site=site)
    deadline = time.monotonic() + 30
    while not np.array_equal(inputs.recent(MODEL, len(x)), x) and time.monotonic() < deadline:
        time.sleep(0.05)


def _served(client: Client, x: np.ndarray) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.predict(x, MODEL)[1] == 1:
                return
        except (httpx.HTTPError, ApiError):  # 503 until the replica has loaded version 1
            pass
        time.sleep(0.1)


def test_shifted_prediction_inputs_raise_an_alert_and_unshifted_do_not(stack: Stack, hook: Hook) -> None:
    ctx = dataclasses.replace(context.build(stack.settings, stack.store, stack.url),
                              watch=WatchConfig(min_samples=100, max_samples=WINDOW),
                              webhook=WebhookConfig(allow=("127.0.0.1",), backoff_s=0.0))
    WebhookStore(ctx.registry).add(new_subscription(url(hook), ["drift.alert"], MODEL))
    client = Client(stack.url, stack.admin_token)
    client.wait_ready()
    base = digits_sites(seed=0, names=("base",))[0]
    client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
    token = client.add_site("watch-base")["token"]
    pushed = client.push("watch-base", token, npz_bytes(to_uint8(base.x[:600]), base.y[:600]), MODEL)
    pipeline.process(ctx, pipeline.Worker(), pushed["batch_id"])  # the first site: learn, gate, promote version 1
    assert ctx.registry.resolve(MODEL) == 1
    _served(client, base.x[:1])
    inputs = InputLog(ctx.registry.cfg, ctx.watch.inputs)

    _predict_all(client, inputs, base.x[600:600 + WINDOW])
    [calm] = [r for r in run_watch(ctx) if r.model == MODEL]
    Dispatcher(ctx.registry, ctx.webhook).run()
    assert calm.site == "serving" and calm.samples == WINDOW and calm.drift is False and calm.label_drift is None
    assert [r for r in run_watch(ctx) if r.model == MODEL] == []  # the same window is not checked twice
    assert ctx.events.alerts(MODEL, kind="drift.alert") == [] and hook.bodies == []

    _predict_all(client, inputs, shift(base.x[800:800 + WINDOW], "contrast", seed=1))
    [shifted] = [r for r in run_watch(ctx) if r.model == MODEL]
    assert shifted.drift is True and shifted.feature_drift is True and shifted.reference_version == 1
    [alert] = client.get("/v1/alerts", model=MODEL, site="serving", kind="drift.alert")
    assert alert["data"]["report_id"] == shifted.id and alert["data"]["batch_id"] == shifted.batch_id
    assert alert["data"]["top_features"] == monitoring.top_columns(shifted) and alert["data"]["top_features"]
    # the site's own alerts are only its readiness when version 1 was promoted, no drift
    assert [a["kind"] for a in client.get("/v1/alerts", model=MODEL, site="watch-base")] == ["site.readiness"]
    Dispatcher(ctx.registry, ctx.webhook).run()
    [body] = hook.bodies
    data = body["event"]["data"]
    assert data["site"] == "serving" and data["verdict"] == "drift" and data["link"].endswith("?format=html")
    auth = {"Authorization": f"Bearer {stack.ops_token}"}
    metrics = httpx.get(f"{stack.url}/metrics", headers=auth).text
    assert f'clreg_alert_events_total{{kind="drift.alert",model="{MODEL}",site="serving"}} 1.0' in metrics, \
        [line for line in metrics.splitlines() if "alert" in line or "redis_up" in line]
    page = httpx.get(f"{stack.url}/v1/drift/{shifted.id}", params={"format": "html"}, headers=auth)
    assert page.headers["content-encoding"] == "gzip" and page.text.lstrip().startswith("<!DOCTYPE html>")
    assert page.headers["x-content-type-options"] == "nosniff"  # and the page may fetch nothing from elsewhere
    assert "default-src 'none'" in page.headers["content-security-policy"]
    plain = httpx.get(f"{stack.url}/v1/drift/{shifted.id}", params={"format": "html"},
                      headers={"Accept-Encoding": "identity", **auth})
    assert "content-encoding" not in plain.headers and plain.text == page.text

    # per site, the checked accuracy estimate: answers at the site as they come, then through a noisy scanner
    site_x = base.x[1000:1000 + WINDOW]
    _predict_all(client, inputs, site_x, site="watch-base")
    run_watch(ctx)
    calm_site = inputs.checked(MODEL)["watch-base"]
    assert calm_site.answers == WINDOW and calm_site.version == 1
    # on traffic like the site's own, the checked estimate stays by the served answers' (the replica's estimate)
    served = expected_accuracy(np.array(client.predict(site_x, MODEL, site="watch-base")[0]["probabilities"]))
    assert calm_site.stable >= 0.95 and served - 0.02 <= calm_site.estimate <= served + 1e-4, (calm_site, served)
    noisy_x = shift(site_x, "noise", seed=2, sd=0.35)
    _predict_all(client, inputs, noisy_x, site="watch-base")
    run_watch(ctx)
    noisy = inputs.checked(MODEL)["watch-base"]
    sure = expected_accuracy(np.array(client.predict(noisy_x, MODEL, site="watch-base")[0]["probabilities"]))
    # the network is nearly as sure as before, while its answers flip under the noisy inputs' own statistics
    assert sure > noisy.estimate + 0.1 and noisy.estimate < calm_site.estimate - 0.1, (noisy, calm_site, sure)
    assert noisy.stable < calm_site.stable - 0.1
    metrics = httpx.get(f"{stack.url}/metrics", headers=auth).text
    assert f'clreg_site_checked_accuracy{{model="{MODEL}",site="watch-base"}} {noisy.estimate}' in metrics
    now = client.get("/v1/sites/watch-base/validation", model=MODEL)["served"]  # the validation report says so too
    assert now["checked"]["estimate"] == noisy.estimate and now["checked"]["stable"] == noisy.stable
    assert now["estimate"] == inputs.estimates(MODEL)["watch-base"][0] and now["answers"] >= 2 * WINDOW
    assert f'clreg_site_stable_answers{{model="{MODEL}",site="watch-base"}} {noisy.stable}' in metrics


def test_the_daemon_schedules_the_watch_at_its_interval(stack: Stack) -> None:
    ctx = dataclasses.replace(context.build(stack.settings, stack.store, stack.url),
                              watch=WatchConfig(interval_s=42.0))
    job = Daemon(ctx).scheduler.get_job("watch-inputs")
    assert job.func is watch.run and job.args == (ctx.stores, ctx.drift, ctx.watch)
    assert job.trigger.interval.total_seconds() == 42.0
    off = dataclasses.replace(ctx, watch=WatchConfig(enabled=False))
    assert Daemon(off).scheduler.get_job("watch-inputs") is None

"""Prometheus metrics for /metrics: read from the registry at scrape time.

The daemon, the gateway and the replicas are separate processes; Redis is the one place that knows
the whole state, so the collector asks it instead of each process keeping its own partial counters.
When Redis cannot be read the scrape still answers, with `clreg_redis_up 0` alone, so that an alert can
tell "Redis is down" from "clreg is down" (a failed scrape). Every name and label is listed in the README
("Metrics") and used by the alert rules in deploy/prometheus/.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.errors import StoreUnavailable
from clreg.registry.events import EventLog
from clreg.registry.inputs import InputLog
from clreg.registry.records import Event
from clreg.registry.status import PipelineStatus, StuckRule, pipeline_status
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookStore

log = logging.getLogger(__name__)


class RegistryCollector(Collector):
    """Models (production, versions, drift, gate failures, last promotion), the pipeline, alerts, webhooks."""

    def __init__(self, registry: RedisRegistry, stuck: StuckRule, inputs: InputLog, artifacts: ArtifactStore) -> None:
        self._reg = registry
        self._stuck = stuck
        self._inputs = inputs
        self._artifacts = artifacts
        self._events = EventLog(registry)
        self._webhooks_store = WebhookStore(registry)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("clreg_redis_up", "1 when the gateway could read Redis at this scrape, else 0")
        try:  # read everything first: a scrape reports all of it or, with Redis away, only that
            found = [*self._models(), *self._sites(), *_pipeline(pipeline_status(self._reg, self._stuck)),
                     *self._alerts(), *self._webhooks()]
        except StoreUnavailable as e:
            log.warning("metrics: Redis unreadable: %s", e)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from found

    def _models(self) -> list[Metric]:
        production = GaugeMetricFamily("clreg_production_version", "Version holding the production alias",
                                       labels=["model"])
        versions = GaugeMetricFamily("clreg_versions", "Versions by status", labels=["model", "status"])
        drift = GaugeMetricFamily("clreg_drift_share", "Share of drifted features in the latest check",
                                  labels=["model", "site"])
        drifted = GaugeMetricFamily("clreg_drift_detected", "1 if the latest check of a site found drift",
                                    labels=["model", "site"])
        failures = GaugeMetricFamily("clreg_gate_failures_in_a_row",
                                     "Gate failures since the model's last passed gate", labels=["model"])
        promoted = GaugeMetricFamily("clreg_last_promotion_timestamp_seconds",
                                     "Unix time the production alias last moved", labels=["model"])
        for model in self._reg.list_models():
            number = self._reg.resolve(model)
            if number is not None:
                production.add_metric([model], number)
            counts = collections.Counter(view.status.value for view in self._reg.list_versions(model))
            for status, n in counts.items():
                versions.add_metric([model, status], n)
            latest = {r.site: r for r in self._reg.reports.drift(model, limit=200)}
            for site, report in latest.items():
                drift.add_metric([model, site], report.drifted_share)
                drifted.add_metric([model, site], float(report.drift))
            failures.add_metric([model], gate_failures_in_a_row(self._events.latest(model, 200)))
            history = self._reg.alias_history(model)
            if history:
                promoted.add_metric([model], history[-1].at)
        return [production, versions, drift, drifted, failures, promoted]

    def _sites(self) -> list[Metric]:
        """Per model and site: accuracy estimated from served answers' calibrated confidences (no labels needed)
        beside the production version's held-out accuracy there; a gap says the site is served worse than
        validated (or, under a shift that fools the model's confidence, nothing: see the drift checks)."""
        estimated = GaugeMetricFamily("clreg_site_estimated_accuracy", "Mean calibrated probability that recent "
                                      "answers at a site are right", labels=["model", "site"])
        answers = GaugeMetricFamily("clreg_site_estimate_answers", "Recent answers the estimate rests on",
                                    labels=["model", "site"])
        heldout = GaugeMetricFamily("clreg_site_heldout_accuracy", "Production version's held-out accuracy at a site",
                                    labels=["model", "site"])
        checked = GaugeMetricFamily("clreg_site_checked_accuracy", "The watch's estimate at a site: answers "
                                    "checked under the inputs' own BatchNorm statistics too",
                                    labels=["model", "site"])
        checked_answers = GaugeMetricFamily("clreg_site_checked_answers", "Recent inputs the checked estimate "
                                            "rests on", labels=["model", "site"])
        stable = GaugeMetricFamily("clreg_site_stable_answers", "Share of recent answers unchanged under the "
                                   "inputs' own BatchNorm statistics", labels=["model", "site"])
        limit = GaugeMetricFamily("clreg_model_estimate_drop_limit", "How far the estimate may fall under the "
                                  "held-out accuracy before the alert (the model's readiness.estimate_drop)",
                                  labels=["model"])
        for model in self._reg.list_models():
            limit.add_metric([model], self._reg.get_model(model).readiness.estimate_drop)
            for site, (mean, n) in self._inputs.estimates(model).items():
                estimated.add_metric([model, site], mean)
                answers.add_metric([model, site], n)
            for site, watched in self._inputs.checked(model).items():
                checked.add_metric([model, site], watched.estimate)
                checked_answers.add_metric([model, site], watched.answers)
                stable.add_metric([model, site], watched.stable)
            version = self._reg.version_by_alias(model)
            calibration = version_calibration(self._artifacts, version) if version else None
            for site, figures in (calibration.sites.items() if calibration else ()):
                if figures.accuracy is not None:
                    heldout.add_metric([model, site], figures.accuracy)
        return [estimated, answers, checked, checked_answers, stable, heldout, limit]

    def _alerts(self) -> list[Metric]:
        found = self._events.alerts(count=100_000)
        alerts = GaugeMetricFamily("clreg_alerts", "Alerts in the alerts stream")
        alerts.add_metric([], len(found))
        return [alerts, _alerts_by_kind(found)]

    def _webhooks(self) -> list[Metric]:
        outcomes = self._webhooks_store.outcomes()
        ended = CounterMetricFamily("clreg_webhook_deliveries", "Webhook deliveries finished, by outcome",
                                    labels=["outcome"])
        for outcome in ("delivered", "failed"):
            ended.add_metric([outcome], outcomes[outcome])
        pending = GaugeMetricFamily("clreg_webhook_deliveries_pending", "Webhook deliveries waiting to be sent")
        pending.add_metric([], outcomes["pending"])
        return [ended, pending]


def gate_failures_in_a_row(newest_first: list[Event]) -> int:
    """gate.failed events before the newest gate.passed (or in all of `newest_first` when none passed)."""
    n = 0
    for event in newest_first:
        if event.kind == "gate.passed":
            break
        n += event.kind == "gate.failed"
    return n


def _pipeline(status: PipelineStatus) -> list[Metric]:
    """Backlog, stuck batches by status, and each daemon's liveness and last heartbeat."""
    backlog = GaugeMetricFamily("clreg_ingest_backlog", "Batches waiting for a daemon")
    backlog.add_metric([], status.backlog)
    stuck = GaugeMetricFamily("clreg_batches_stuck", "Batches in a non-final state for longer than the stuck rule",
                              labels=["status"])
    for state in ("received", "drift_checked", "training", "gated", "shadowing", "awaiting_approval"):
        stuck.add_metric([state], sum(b.status.value == state for b in status.stuck))
    up = GaugeMetricFamily("clreg_daemon_up", "1 while a daemon beats, 0 once it stopped or died", labels=["daemon"])
    beat = GaugeMetricFamily("clreg_daemon_last_heartbeat_seconds", "Unix time of a daemon's last heartbeat",
                             labels=["daemon"])
    for line in status.daemons:
        up.add_metric([line.heartbeat.incarnation.name], float(line.alive))
        beat.add_metric([line.heartbeat.incarnation.name], line.heartbeat.at)
    return [backlog, stuck, up, beat, *_learning(status), _memory(status)]


def _learning(status: PipelineStatus) -> list[Metric]:
    """Batches waiting after a rejected update, and sites with data their model's production has not learnt."""
    waiting = GaugeMetricFamily("clreg_batches_waiting", "Batches waiting after a rejected update to join the "
                                "model's next one", labels=["model", "site"])
    for (model, site), n in sorted(collections.Counter((w.model, w.site) for w in status.waiting).items()):
        waiting.add_metric([model, site], n)
    not_learnt = GaugeMetricFamily("clreg_site_not_learnt", "1 for a site that pushed data its model's production "
                                   "version has not learnt", labels=["model", "site"])
    for learning in status.not_learnt:
        not_learnt.add_metric([learning.model, learning.site], 1.0)
    return [waiting, not_learnt]


def _memory(status: PipelineStatus) -> Metric:
    """Each live daemon's process tree, process by process (under clreg up: the whole local stack)."""
    rss = GaugeMetricFamily("clreg_process_resident_bytes", "Resident memory of each process under a live daemon "
                            "(under clreg up: the whole local stack)", labels=["daemon", "pid", "process"])
    for line in status.daemons:
        for proc in line.heartbeat.memory if line.alive else []:
            rss.add_metric([line.heartbeat.incarnation.name, str(proc.pid), proc.name], proc.rss_bytes)
    return rss


def _alerts_by_kind(alerts: list[Event]) -> CounterMetricFamily:
    """Alerts kept in the (capped) alerts stream, by model, site ("serving" for the input watch) and kind."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter(
        (e.model, str(e.data.get("site") or ""), e.kind) for e in alerts)
    family = CounterMetricFamily("clreg_alert_events", "Alerts by model, site and kind",
                                 labels=["model", "site", "kind"])
    for (model, site, kind), n in sorted(counts.items()):
        family.add_metric([model, site, kind], n)
    return family


def build(registry: RedisRegistry, stuck: StuckRule, inputs: InputLog,
          artifacts: ArtifactStore) -> tuple[CollectorRegistry, Counter]:
    """A private metrics registry with the collector and the gateway's own request counter."""
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry, stuck, inputs, artifacts))
    batches = Counter("clreg_batches", "Batches pushed, by outcome", ["outcome"], registry=metrics)
    return metrics, batches

"""Prometheus metrics for /metrics: read from the registry at scrape time.

The daemon, the gateway and the replicas are separate processes; Redis is the one place that knows
the whole state, so the collector asks it instead of each process keeping its own partial counters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry.events import EventLog
from registry.records import Event
from registry.status import PipelineStatus, StuckRule, pipeline_status
from registry.store import RedisRegistry


class RegistryCollector(Collector):
    """Production versions, version counts by status, ingest backlog, alerts and latest drift per site."""

    def __init__(self, registry: RedisRegistry, stuck: StuckRule) -> None:
        self._reg = registry
        self._stuck = stuck

    def collect(self) -> Iterator[Metric]:
        production = GaugeMetricFamily("clreg_production_version", "Version holding the production alias",
                                       labels=["model"])
        versions = GaugeMetricFamily("clreg_versions", "Versions by status", labels=["model", "status"])
        drift = GaugeMetricFamily("clreg_drift_share", "Share of drifted features in the latest check",
                                  labels=["model", "site"])
        drifted = GaugeMetricFamily("clreg_drift_detected", "1 if the latest check of a site found drift",
                                    labels=["model", "site"])
        for model in self._reg.list_models():
            number = self._reg.resolve(model)
            if number is not None:
                production.add_metric([model], number)
            counts: dict[str, int] = {}
            for view in self._reg.list_versions(model):
                counts[view.status.value] = counts.get(view.status.value, 0) + 1
            for status, n in counts.items():
                versions.add_metric([model, status], n)
            latest = {r.site: r for r in self._reg.drift_reports(model, limit=200)}
            for site, report in latest.items():
                drift.add_metric([model, site], report.drifted_share)
                drifted.add_metric([model, site], float(report.drift))
        yield from (production, versions, drift, drifted)
        yield from _pipeline(pipeline_status(self._reg, self._stuck))
        found = EventLog(self._reg).alerts(count=100_000)
        alerts = GaugeMetricFamily("clreg_alerts", "Alerts in the alerts stream")
        alerts.add_metric([], len(found))
        yield alerts
        yield _alerts_by_kind(found)


def _pipeline(status: PipelineStatus) -> Iterator[Metric]:
    """Backlog, stuck batches by status, and each daemon's liveness and last heartbeat."""
    backlog = GaugeMetricFamily("clreg_ingest_backlog", "Batches waiting for a daemon")
    backlog.add_metric([], status.backlog)
    stuck = GaugeMetricFamily("clreg_batches_stuck", "Batches in a non-final state for longer than the stuck rule",
                              labels=["status"])
    for state in ("received", "drift_checked", "training", "gated"):
        stuck.add_metric([state], sum(b.status.value == state for b in status.stuck))
    up = GaugeMetricFamily("clreg_daemon_up", "1 while a daemon beats, 0 once it stopped or died", labels=["daemon"])
    beat = GaugeMetricFamily("clreg_daemon_last_heartbeat_seconds", "Unix time of a daemon's last heartbeat",
                             labels=["daemon"])
    for line in status.daemons:
        up.add_metric([line.heartbeat.incarnation.name], float(line.alive))
        beat.add_metric([line.heartbeat.incarnation.name], line.heartbeat.at)
    yield from (backlog, stuck, up, beat)


def _alerts_by_kind(alerts: list[Event]) -> CounterMetricFamily:
    """Alerts kept in the (capped) alerts stream, by model, site ("serving" for the input watch) and kind."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter(
        (e.model, str(e.data.get("site") or ""), e.kind) for e in alerts)
    family = CounterMetricFamily("clreg_alert_events", "Alerts by model, site and kind",
                                 labels=["model", "site", "kind"])
    for (model, site, kind), n in sorted(counts.items()):
        family.add_metric([model, site, kind], n)
    return family


def build(registry: RedisRegistry, stuck: StuckRule) -> tuple[CollectorRegistry, Counter]:
    """A private metrics registry with the collector and the gateway's own request counter."""
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(registry, stuck))
    batches = Counter("clreg_batches", "Batches pushed, by outcome", ["outcome"], registry=metrics)
    return metrics, batches

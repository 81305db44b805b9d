"""Scheduled checks of the inputs Serve has seen: drift and accuracy are watched before any labels arrive.

Each run takes, per model with a production version, the newest recorded prediction inputs, turns them
into features with the production model and its reference, and runs the same Evidently check as a batch
(without the label test). The report's site is "serving" and its batch id is the window's content digest;
a window already checked (no new inputs since) is skipped, so an idle model raises no repeated alerts.
Then, per site with enough recent inputs, the checked accuracy estimate (learner.estimate) of the
production version answering them as the replicas do; the metrics export it beside the replicas' own
estimate, and the site's estimate alert fires on either.
"""

from __future__ import annotations

import dataclasses
import logging

from clreg import monitoring
from clreg.context import DriftStep, Stores
from clreg.learner.errors import LearnerError
from clreg.learner.estimate import checked_accuracy, stable, two_views
from clreg.learner.models import to_tensor
from clreg.monitor.errors import MonitorError
from clreg.registry.artifacts import Artifact, version_calibration
from clreg.registry.errors import RegistryError
from clreg.registry.findings import DriftReport
from clreg.registry.inputs import CheckedEstimate, InputLog
from clreg.settings import WatchConfig

log = logging.getLogger(__name__)
SITE = "serving"


def check_model(stores: Stores, step: DriftStep, cfg: WatchConfig, inputs: InputLog, name: str) -> DriftReport | None:
    """One model's window of recent inputs against its production reference; None when there is nothing to check."""
    production = stores.production(name)
    if production is None or Artifact.REFERENCE not in production.artifacts:
        return None
    model = stores.registry.get_model(name)
    x = inputs.recent(name, cfg.max_samples)
    spec = model.input
    if len(x) < cfg.min_samples or x.shape[1:] != (spec.channels, spec.height, spec.width):
        return None
    window = inputs.window_id(x)
    if inputs.seen(name, window):
        return None
    reference, current = monitoring.features(stores, model, production, x, None)
    return monitoring.check(stores, step, reference, current, DriftReport(
        id=monitoring.new_report_id(), model=name, site=SITE, batch_id=window, reference_version=production.number,
        samples=len(current)))


def estimate_sites(stores: Stores, cfg: WatchConfig, inputs: InputLog, name: str) -> dict[str, CheckedEstimate]:
    """Per site with at least `min_samples` recent inputs: the checked estimate of the production version
    answering them as a replica does (the site's BatchNorm and temperature, its threshold for a binary model)."""
    production = stores.production(name)
    if production is None:
        return {}
    model = stores.registry.get_model(name)
    answerer = dataclasses.replace(stores.answerer(model, production),
                                   calibration=version_calibration(stores.artifacts, production))
    thresholds = {s.name: s.threshold for s in stores.registry.sites() if s.threshold is not None}
    spec = model.input
    out = {}
    for site, x in inputs.recent_by_site(name, cfg.max_samples).items():
        if len(x) < cfg.min_samples or x.shape[1:] != (spec.channels, spec.height, spec.width):
            continue
        net, _, _ = answerer.pick(site, to_tensor(x))
        threshold = thresholds.get(site) if spec.classes == 2 else None
        served, own = two_views(net, x, answerer.temperature(site)[1])
        out[site] = CheckedEstimate(estimate=checked_accuracy(served, own, threshold),
                                    stable=float(stable(served, own, threshold).mean()), answers=len(x),
                                    version=production.number)
        inputs.set_checked(name, site, out[site])
    return out


def run(stores: Stores, step: DriftStep, cfg: WatchConfig) -> list[DriftReport]:
    """The APScheduler job: check every model's recent inputs; one model's failure does not stop the others."""
    inputs = InputLog(stores.registry.cfg, cfg.inputs)
    reports: list[DriftReport] = []
    for name in stores.registry.list_models():
        try:
            report = check_model(stores, step, cfg, inputs, name)
        except (MonitorError, RegistryError) as e:
            log.warning("drift watch of %s skipped: %s", name, e)
            report = None
        if report is not None:
            reports.append(report)
        try:
            estimate_sites(stores, cfg, inputs, name)
        except (LearnerError, RegistryError) as e:
            log.warning("accuracy estimate of %s skipped: %s", name, e)
    return reports

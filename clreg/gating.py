"""Gate: score candidate and production by the model's task metric on every learnt site's held-out set, and
judge non-inferiority (registry.gates) from those figures."""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from clreg import scores
from clreg.context import Stores
from clreg.learner import taskmetric
from clreg.learner.taskmetric import Metric, Scoring
from clreg.registry.findings import GateReport, SiteGate
from clreg.registry.gates import GateRules, SiteFigures, judge, upper_bound
from clreg.registry.records import Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.settings import GateConfig

Best = dict[str, dict[str, float]]  # site -> metric -> the best value a version has had on it


def scoring_of(model: Model) -> Scoring:
    """How the gate and the candidate search score a held-out set of this model: its task metric and costs."""
    return Scoring(metric=model.task_metric, cost_fp=model.costs.false_positive, cost_fn=model.costs.false_negative)


def gate(stores: Stores, cfg: GateConfig, model: Model, candidate: ModelVersion,
         production: ModelVersion | None) -> GateReport:
    """The GateReport of `candidate` against `production` (stored; the caller acts on `passed`)."""
    by_site = scores.batches_by_site(stores, stores.learnt_batches(candidate))
    scoring = scoring_of(model)
    earlier = set(production.lineage.sites) if production else set()
    rules = GateRules(tolerance=cfg.tolerance, site_tolerance=cfg.site_tolerance, confidence=cfg.confidence,
                      budget=cfg.forgetting_budget, metric=scoring.metric, min_images=cfg.min_images,
                      family=len(earlier & set(by_site)))
    cand = scores.of_version(stores, model, candidate, by_site)
    prod = scores.of_version(stores, model, production, by_site) if production is not None else None
    figures = {site: site_figures(scoring, s.labels, s.proba, None if prod is None else prod[site].proba, rules)
               for site, s in cand.items()}
    best = best_since_learnt(stores.registry, production)
    tops = {s: best[s][f.metric] for s, f in figures.items() if f.metric in best.get(s, {})}
    verdict = judge(figures, set(by_site) - earlier, rules, best=tops)
    report = GateReport(id=f"g-{model.name}-{candidate.number}", model=model.name, candidate=candidate.number,
                        production=production.number if production else None, tolerance=rules.tolerance,
                        confidence=rules.confidence, sites=verdict.lines, passed=not verdict.reasons,
                        reasons=verdict.reasons, site_tolerance=rules.site_tolerance, budget=rules.budget,
                        pooled_delta=verdict.pooled_delta, pooled_lower_bound=verdict.pooled_lower_bound,
                        metric=scoring.metric, too_small=verdict.too_small, notes=verdict.notes,
                        pooled_only=verdict.pooled_only, min_images=rules.min_images,
                        budget_confidence=rules.budget_confidence,
                        best=with_lines(best, verdict.lines))
    stores.registry.reports.put_gate(report)
    return report


def site_figures(scoring: Scoring, y: np.ndarray, candidate: np.ndarray, production: np.ndarray | None,
                 rules: GateRules, draws: int = taskmetric.DRAWS) -> SiteFigures:
    """One site's gate figures from its held-out labels and both models' probabilities [N, K] on them (`draws`
    bootstrap resamples for a metric that is not a mean over samples).

    Where the metric is undefined on the set (AUROC of a set with one class), the site is judged by accuracy.
    """
    y = np.asarray(y).astype(np.int64)
    if math.isnan(taskmetric.value(scoring, y, candidate)):
        scoring = Scoring()
    conf, n = rules.confidence, len(y)
    correct = candidate.argmax(axis=1) == y
    if scoring.metric == "accuracy":
        optimistic = upper_bound(correct, rules.budget_confidence)  # Wilson
    else:
        level = 2 * rules.budget_confidence - 1
        low, high = taskmetric.interval(scoring, y, candidate, level=level, draws=draws)
        optimistic = high if scoring.higher_is_better else low
    common = {"samples": n, "class_counts": tuple(int(c) for c in np.bincount(y, minlength=candidate.shape[1])),
              "metric": scoring.metric, "candidate": taskmetric.value(scoring, y, candidate),
              "optimistic": optimistic, "candidate_accuracy": float(correct.mean()),
              "higher_is_better": scoring.higher_is_better,
              "one_image": taskmetric.one_image(scoring, y, candidate.shape[1])}
    if production is None:
        return SiteFigures(**common)  # type: ignore[arg-type]
    paired = taskmetric.paired_change(scoring, y, candidate, production, conf, draws=draws)
    drop = taskmetric.detectable_drop(paired.se, conf)
    needed = taskmetric.samples_needed(n, drop, rules.tolerance) - n \
        if math.isfinite(drop) and rules.tolerance > 0 else None
    return SiteFigures(**common, production=taskmetric.value(scoring, y, production),  # type: ignore[arg-type]
                       production_accuracy=float(np.mean(production.argmax(axis=1) == y)), delta=paired.delta,
                       lower_bound=paired.lower_bound, se=paired.se, detectable_drop=drop, samples_needed=needed)


def best_since_learnt(registry: RedisRegistry, production: ModelVersion | None) -> Best:
    """Per site and metric, the best held-out value any version in production's line has had: the `best` its own
    gate report carries (one read); for a production without one (forced, or gated before reports kept it), from
    the gate reports of its line (a report from before the task metric gives accuracy only)."""
    if production is None:
        return {}
    report_id = registry.gate_report_id(production.model, production.number)
    if report_id:
        report = registry.reports.get_gate(report_id)
        if report.best:
            return {site: dict(values) for site, values in report.best.items()}
    best: Best = {}
    reports = {v.version.number: v.gate_report_id for v in registry.list_versions(production.model)}
    number: int | None = production.number
    while number is not None:
        if reports.get(number):
            with_lines(best, registry.reports.get_gate(reports[number]).sites)  # type: ignore[arg-type]
        number = registry.get_version(production.model, number).lineage.parent
    return best


def with_lines(best: Best, lines: list[SiteGate]) -> Best:
    """`best` updated in place with a report's lines: each site's accuracy and its value in the line's metric."""
    for line in lines:
        _keep(best.setdefault(line.site, {}), "accuracy", line.candidate_accuracy)
        if line.metric and line.candidate_value is not None:
            _keep(best[line.site], line.metric, line.candidate_value)
    return best


def _keep(best: dict[str, float], metric: str, value: float) -> None:
    """Keep the better of `best[metric]` and `value` (the lower for a cost)."""
    if metric not in best:
        best[metric] = value
        return
    higher = Scoring(metric=cast(Metric, metric)).higher_is_better
    best[metric] = max(best[metric], value) if higher else min(best[metric], value)

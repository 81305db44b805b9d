"""Gate: score candidate and production on every learnt site's held-out set and judge non-inferiority."""

from __future__ import annotations

import numpy as np

from clreg.context import Stores
from clreg.learner.answer import Answerer
from clreg.learner.evaluate import site_metrics
from clreg.learner.models import to_tensor
from clreg.registry.gates import GateRules, judge
from clreg.registry.records import GateReport, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.settings import GateConfig


def gate(stores: Stores, cfg: GateConfig, model: Model, candidate: ModelVersion,
         production: ModelVersion | None) -> GateReport:
    """The GateReport of `candidate` against `production` (stored; the caller acts on `passed`)."""
    heldout = stores.split_by_site(model, stores.learnt_batches(candidate), "heldout")
    cand = _outcomes(stores.answerer(model, candidate), heldout)
    prod: dict[str, np.ndarray] | None = None
    if production is not None:
        prod = _outcomes(stores.answerer(model, production), heldout)
    earlier = set(production.lineage.sites) if production else set()
    rules = GateRules(tolerance=cfg.tolerance, site_tolerance=cfg.site_tolerance,
                      confidence=cfg.confidence, budget=cfg.forgetting_budget)
    verdict = judge(cand, prod, set(heldout) - earlier, rules, best=best_since_learnt(stores.registry, production))
    report = GateReport(id=f"g-{model.name}-{candidate.number}", model=model.name, candidate=candidate.number,
                        production=production.number if production else None, tolerance=rules.tolerance,
                        confidence=rules.confidence, sites=verdict.lines, passed=not verdict.reasons,
                        reasons=verdict.reasons, site_tolerance=rules.site_tolerance, budget=rules.budget,
                        pooled_delta=verdict.pooled_delta, pooled_lower_bound=verdict.pooled_lower_bound)
    stores.registry.reports.put_gate(report)
    return report


def best_since_learnt(registry: RedisRegistry, production: ModelVersion | None) -> dict[str, float]:
    """Per site, the best held-out accuracy any version in production's line has had (from their gate reports)."""
    best: dict[str, float] = {}
    if production is None:
        return best
    reports = {v.version.number: v.gate_report_id for v in registry.list_versions(production.model)}
    number: int | None = production.number
    while number is not None:
        if reports.get(number):
            for line in registry.reports.get_gate(reports[number]).sites:  # type: ignore[arg-type]
                best[line.site] = max(best.get(line.site, 0.0), line.candidate_accuracy)
        number = registry.get_version(production.model, number).lineage.parent
    return best


def _outcomes(answerer: Answerer, heldout: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-sample correctness per site, each site's held-out set answered as one /v1/predict request naming the
    site would be (a site the version never learnt is routed to the BatchNorm that explains its images best)."""
    out = {}
    for site, (x, y) in heldout.items():
        net, _, _ = answerer.pick(site, to_tensor(x))
        out[site] = site_metrics(net, x, y).correct  # temperature scaling never changes a label
    return out

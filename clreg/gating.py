"""Gate: score candidate and production on every learnt site's held-out set and judge non-inferiority."""

from __future__ import annotations

import numpy as np

from clreg.context import Context
from learner.evaluate import site_metrics
from registry.gates import judge
from registry.records import GateReport, Model, ModelVersion


def gate(ctx: Context, model: Model, candidate: ModelVersion, production: ModelVersion | None) -> GateReport:
    """The GateReport of `candidate` against `production` (stored; the caller acts on `passed`)."""
    heldout = ctx.split_by_site(model, ctx.learnt_batches(candidate), "heldout")
    cand_net = ctx.module(model, candidate.artifacts["weights"])
    cand = {site: site_metrics(cand_net, x, y).correct for site, (x, y) in heldout.items()}
    prod: dict[str, np.ndarray] | None = None
    if production is not None:
        prod_net = ctx.module(model, production.artifacts["weights"])
        prod = {site: site_metrics(prod_net, x, y).correct for site, (x, y) in heldout.items()}
    earlier = set(production.lineage.sites) if production else set()
    lines, reasons = judge(cand, prod, set(heldout) - earlier, ctx.gate.tolerance, ctx.gate.confidence)
    report = GateReport(id=f"g-{model.name}-{candidate.number}", model=model.name, candidate=candidate.number,
                        production=production.number if production else None, tolerance=ctx.gate.tolerance,
                        confidence=ctx.gate.confidence, sites=lines, passed=not reasons, reasons=reasons)
    ctx.registry.put_gate_report(report)
    return report

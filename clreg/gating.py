"""Gate: score candidate and production on every learnt site's held-out set and judge non-inferiority."""

from __future__ import annotations

import numpy as np
from torch import nn

from clreg.context import Context
from learner.evaluate import site_metrics
from learner.models import to_tensor
from learner.sitebn import Bank, route
from registry.gates import judge
from registry.records import GateReport, Model, ModelVersion


def gate(ctx: Context, model: Model, candidate: ModelVersion, production: ModelVersion | None) -> GateReport:
    """The GateReport of `candidate` against `production` (stored; the caller acts on `passed`)."""
    heldout = ctx.split_by_site(model, ctx.learnt_batches(candidate), "heldout")
    cand = _outcomes(ctx.module(model, candidate.artifacts["weights"]), ctx.bank(candidate), heldout)
    prod: dict[str, np.ndarray] | None = None
    if production is not None:
        prod = _outcomes(ctx.module(model, production.artifacts["weights"]), ctx.bank(production), heldout)
    earlier = set(production.lineage.sites) if production else set()
    lines, reasons = judge(cand, prod, set(heldout) - earlier, ctx.gate.tolerance, ctx.gate.confidence)
    report = GateReport(id=f"g-{model.name}-{candidate.number}", model=model.name, candidate=candidate.number,
                        production=production.number if production else None, tolerance=ctx.gate.tolerance,
                        confidence=ctx.gate.confidence, sites=lines, passed=not reasons, reasons=reasons)
    ctx.registry.put_gate_report(report)
    return report


def _outcomes(net: nn.Module, bank: Bank | None,
              heldout: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-sample correctness per site, each site scored as serving would answer it.

    With a per-site BatchNorm bank a known site uses its own entry; a site the version never learnt is
    routed by MAP to the entry that explains its images best, exactly as /v1/predict does.
    """
    out = {}
    for site, (x, y) in heldout.items():
        site_bn = None
        if bank:
            site_bn = bank[site if site in bank else route(net, bank, to_tensor(x))]
        out[site] = site_metrics(net, x, y, site_bn=site_bn).correct
    return out

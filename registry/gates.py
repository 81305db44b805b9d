"""The promotion verdict: is a candidate non-inferior to production on every site?

Held-out sets are small, so the gate uses a bound, not a raw delta: candidate and production are scored
on the same samples, and the one-sided lower confidence bound of the paired difference in accuracy must
stay above -tolerance on every earlier site. A site the candidate learnt for the first time must not get
worse at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np

from registry.records import SiteGate


def paired_lower_bound(candidate: np.ndarray, production: np.ndarray, confidence: float) -> tuple[float, float]:
    """Mean paired difference of per-sample correctness and its one-sided lower bound (normal approx.)."""
    d = candidate.astype(np.float64) - production.astype(np.float64)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return mean, -math.inf
    se = float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - NormalDist().inv_cdf(confidence) * se


def judge(
    candidate: Mapping[str, np.ndarray],
    production: Mapping[str, np.ndarray] | None,
    new_sites: set[str],
    tolerance: float,
    confidence: float,
) -> tuple[list[SiteGate], list[str]]:
    """Per-site lines and the reasons for rejection (empty when the candidate passes).

    `candidate`/`production` map site -> boolean array of per-sample correctness on that site's held-out set.
    """
    lines: list[SiteGate] = []
    reasons: list[str] = []
    for site in sorted(candidate):
        cand = candidate[site]
        acc = float(cand.mean()) if cand.size else 0.0
        prod = production.get(site) if production is not None else None
        if prod is None:
            lines.append(SiteGate(site=site, samples=int(cand.size), candidate_accuracy=acc,
                                  production_accuracy=None, delta=None, lower_bound=None,
                                  new_site=site in new_sites, passed=True))
            continue
        delta, bound = paired_lower_bound(cand, prod, confidence)
        is_new = site in new_sites
        passed = delta >= 0.0 if is_new else bound > -tolerance
        if not passed:
            rule = "got worse on its new site" if is_new else f"lower bound {bound:+.3f} <= -{tolerance:.3f}"
            reasons.append(f"site {site}: accuracy {acc:.3f} vs production {float(prod.mean()):.3f}; {rule}")
        lines.append(SiteGate(site=site, samples=int(cand.size), candidate_accuracy=acc,
                              production_accuracy=float(prod.mean()), delta=delta,
                              lower_bound=None if math.isinf(bound) else bound,
                              new_site=is_new, passed=passed))
    return lines, reasons

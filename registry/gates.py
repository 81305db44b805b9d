"""The promotion verdict: is a candidate non-inferior to production on the earlier sites, and no worse on its new one?

Held-out sets are small, so the gate uses bounds, not raw deltas: candidate and production are scored on the
same samples. Three rules protect the earlier sites:
- together: the one-sided lower confidence bound of the mean paired accuracy difference (each earlier site
  weighing the same) must stay above -tolerance. Pooling is what gives the test its power: measured with
  ~75 held-out samples a site, a per-site bound at the same margin rejected 30-40% of candidates that were
  as good as production (churn alone, the samples on which the two disagree, widens each site's bound);
- each on its own: its lower bound must stay above -site_tolerance, a wider margin that catches one site
  being damaged while the others hold;
- over time: its accuracy's upper confidence bound must reach the best accuracy it has had since it was
  learnt minus a cumulative budget, so that ten updates each losing a little cannot add up to a lot.
A site the candidate learnt for the first time must not get worse at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from clreg.registry.records import SiteGate


@dataclass(frozen=True)
class GateRules:
    tolerance: float = 0.05  # earlier sites together
    site_tolerance: float = 0.15  # any one earlier site
    confidence: float = 0.8  # one-sided, for every bound
    budget: float = 0.05  # from the best accuracy since a site was learnt, cumulative


@dataclass(frozen=True)
class Verdict:
    lines: list[SiteGate]
    reasons: list[str]
    pooled_delta: float | None = None
    pooled_lower_bound: float | None = None


def paired_lower_bound(candidate: np.ndarray, production: np.ndarray, confidence: float) -> tuple[float, float]:
    """Mean paired difference of per-sample correctness and its one-sided lower bound (normal approx.)."""
    d = candidate.astype(np.float64) - production.astype(np.float64)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return mean, -math.inf
    se = float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - NormalDist().inv_cdf(confidence) * se


def pooled_lower_bound(pairs: list[tuple[np.ndarray, np.ndarray]], confidence: float) -> tuple[float, float]:
    """Mean over sites of each site's mean paired difference, and its one-sided lower bound (sites independent)."""
    deltas, variances = [], []
    for cand, prod in pairs:
        d = cand.astype(np.float64) - prod.astype(np.float64)
        deltas.append(float(d.mean()))
        variances.append(float(d.var(ddof=1)) / d.size if d.size > 1 else math.inf)
    k = len(deltas)
    mean = float(np.mean(deltas))
    se = math.sqrt(sum(variances)) / k
    return mean, mean - NormalDist().inv_cdf(confidence) * se


def upper_bound(correct: np.ndarray, confidence: float) -> float:
    """One-sided upper confidence bound of an accuracy (Wilson score interval)."""
    n = correct.size
    if n == 0:
        return 1.0
    p, z = float(correct.mean()), NormalDist().inv_cdf(confidence)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(1.0, centre + spread)


def judge(candidate: Mapping[str, np.ndarray], production: Mapping[str, np.ndarray] | None, new_sites: set[str],
          rules: GateRules, best: Mapping[str, float] | None = None) -> Verdict:
    """Per-site lines, the reasons for rejection (none when the candidate passes), and the pooled figures.

    `candidate`/`production` map site -> boolean array of per-sample correctness on that site's held-out set;
    `best` maps an earlier site to the best accuracy a version has had on it since it was learnt.
    """
    lines: list[SiteGate] = []
    reasons: list[str] = []
    earlier: list[tuple[np.ndarray, np.ndarray]] = []
    for site in sorted(candidate):
        cand = candidate[site]
        prod = production.get(site) if production is not None else None
        is_new = site in new_sites or prod is None
        if prod is not None and not is_new:
            earlier.append((cand, prod))
        lines.append(_line(site, cand, prod, is_new, rules, None if best is None else best.get(site), reasons))
    if not earlier:
        return Verdict(lines, reasons)
    delta, bound = pooled_lower_bound(earlier, rules.confidence)
    if bound <= -rules.tolerance:
        reasons.append(f"earlier sites together: mean change {delta:+.3f}, lower bound {bound:+.3f} "
                       f"<= -{rules.tolerance:.3f}")
    return Verdict(lines, reasons, delta, None if math.isinf(bound) else bound)


def _line(site: str, cand: np.ndarray, prod: np.ndarray | None, is_new: bool, rules: GateRules,
          top: float | None, reasons: list[str]) -> SiteGate:
    """One site's line; its failures are appended to `reasons`."""
    acc = float(cand.mean()) if cand.size else 0.0
    if prod is None:
        return SiteGate(site=site, samples=int(cand.size), candidate_accuracy=acc, production_accuracy=None,
                        delta=None, lower_bound=None, new_site=True, passed=True)
    delta, bound = paired_lower_bound(cand, prod, rules.confidence)
    passed = delta >= 0.0 if is_new else bound > -rules.site_tolerance
    if not passed:
        rule = "got worse on its new site" if is_new else f"lower bound {bound:+.3f} <= -{rules.site_tolerance:.3f}"
        reasons.append(f"site {site}: accuracy {acc:.3f} vs production {float(prod.mean()):.3f}; {rule}")
    top = None if is_new else top
    if top is not None and upper_bound(cand, rules.confidence) < top - rules.budget:
        passed = False
        reasons.append(f"site {site}: accuracy {acc:.3f} vs its best {top:.3f} since it was learnt; more than "
                       f"the cumulative budget of {rules.budget:.3f} lost")
    return SiteGate(site=site, samples=int(cand.size), candidate_accuracy=acc, production_accuracy=float(prod.mean()),
                    delta=delta, lower_bound=None if math.isinf(bound) else bound, best_accuracy=top,
                    new_site=is_new, passed=passed)

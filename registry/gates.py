"""The promotion verdict: is a candidate non-inferior to production on the earlier sites, and no worse on its new one?

The gate judges the model's task metric (accuracy, balanced accuracy, AUROC or expected cost: at a
10%-prevalence site a model answering only "normal" scores 0.9 accuracy but 0.5 AUROC), from per-site figures
the caller computes (`SiteFigures`); every change is oriented so that positive means the candidate is better,
and every tolerance is in the metric's units. Held-out sets are small, so the gate uses bounds, not raw deltas:
candidate and production are scored on the same samples. Three rules protect the earlier sites:
- together: the one-sided lower confidence bound of the mean paired change (each earlier site weighing the
  same) must stay above -tolerance. Pooling is what gives the test its power: measured with ~75 held-out
  samples a site, a per-site bound at the same margin rejected 30-40% of candidates that were as good as
  production (churn alone, the samples on which the two disagree, widens each site's bound);
- each on its own: its lower bound must stay above -site_tolerance, a wider margin that catches one site
  being damaged while the others hold;
- over time: the candidate's optimistic bound (upper for a score, lower for a cost) must reach the best value
  the site has had since it was learnt less a cumulative budget, so ten updates each losing a little cannot
  add up to a lot. Unlike the two rules above, this one rejects only on evidence of harm, once per earlier
  site, and the best is the maximum of many noisy figures on the same small set: judged at the gate's
  confidence site by site, at fifty sites of ~22 images some site's figure fell 2-3 images below its best
  on churn alone in most updates (measured: 18 of 50 batches kept waiting). So the optimistic bound is taken
  at the family-wise confidence (Sidak: `confidence ** (1 / sites)` over the earlier sites judged), which
  keeps the chance that any equal-quality site vetoes an update at 1 - confidence.
A site the candidate learnt for the first time must not get worse (by more than `min_images` can make, below).

Every line also says what its held-out set can see: the smallest change it distinguishes at the gate's
confidence. A site is too small when that exceeds the pooled `tolerance` (the margin the gate is there to
enforce): its own verdict cannot tell a tolerable change from an intolerable one.

Many small sites: the earlier sites are pooled with weights by held-out size (the change per held-out image),
and no site rejects a candidate by itself (site tolerance or budget) for a drop that fewer than `min_images` of
its held-out images could make: on a 20-image site two images are ten points of accuracy, and at twenty such
sites churn alone would veto most updates (measured: 9 of 20). A site where even its site tolerance is within
`min_images - 1` images' reach is judged only in the pool (`pooled_only`); a real drop there moves the pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from clreg.registry.findings import SiteGate


@dataclass(frozen=True)
class GateRules:
    tolerance: float = 0.05  # earlier sites together
    site_tolerance: float = 0.15  # any one earlier site
    confidence: float = 0.8  # one-sided, for every bound
    budget: float = 0.05  # from the best value since a site was learnt, cumulative
    metric: str = "accuracy"  # the model's task metric: tolerances and budget are in its units
    min_images: int = 3  # a site alone rejects only a drop that fewer held-out images could not make
    family: int = 1  # earlier sites judged together: the budget's optimistic bound is at budget_confidence

    @property
    def budget_confidence(self) -> float:
        """Per-site confidence of the budget's optimistic bound that keeps the family-wise one at `confidence`."""
        return float(self.confidence ** (1.0 / max(self.family, 1)))


@dataclass(frozen=True)
class SiteFigures:
    """One site's held-out set scored for the gate, in the units of `metric` (the model's, or accuracy where
    it is undefined on this set); `delta`/`lower_bound`/`se` are the paired change, positive = candidate better.

    `optimistic` is the candidate value's one-sided bound on its good side at the rules' `budget_confidence`
    (the budget rule); `detectable_drop`
    the smallest change this set distinguishes at the gate's confidence (inf: it cannot); `samples_needed` how
    many more labelled samples would bring it down to the tolerance (None: no number of them would).
    """

    samples: int
    class_counts: tuple[int, ...]
    metric: str
    candidate: float
    optimistic: float
    candidate_accuracy: float
    production: float | None = None
    production_accuracy: float | None = None
    delta: float | None = None
    lower_bound: float | None = None
    se: float | None = None
    detectable_drop: float | None = None
    samples_needed: int | None = None
    higher_is_better: bool = True  # False for a cost: `optimistic` is then its lower bound
    one_image: float = 0.0  # the most one held-out image moves the metric (learner.taskmetric.one_image)


@dataclass(frozen=True)
class Verdict:
    lines: list[SiteGate]
    reasons: list[str]
    pooled_delta: float | None = None
    pooled_lower_bound: float | None = None
    too_small: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pooled_only: list[str] = field(default_factory=list)  # earlier sites too small to be judged alone


def pooled_lower_bound(changes: list[tuple[float, float]], confidence: float,
                       weights: list[float] | None = None) -> tuple[float, float]:
    """Weighted mean over sites of their (delta, se) (equal weights by default), and its one-sided lower bound
    (sites independent: se = sqrt(sum w^2 se^2) / sum w)."""
    w = np.ones(len(changes)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = float(np.dot(w, [d for d, _ in changes]) / w.sum())
    se = math.sqrt(sum(wi * wi * s * s for wi, (_, s) in zip(w, changes, strict=True))) / float(w.sum())
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


def judge(figures: Mapping[str, SiteFigures], new_sites: set[str], rules: GateRules,
          best: Mapping[str, float] | None = None) -> Verdict:
    """Per-site lines, the reasons for rejection (none when the candidate passes), the pooled figures, and the
    sites whose held-out sets are too small to see the tolerance (with a note each).

    A site without production figures is new (nothing to compare with); `best` maps an earlier site to the
    best value of its figures' metric a version has had on it since it was learnt.
    """
    lines: list[SiteGate] = []
    reasons: list[str] = []
    notes: list[str] = []
    earlier: list[tuple[float, float]] = []
    sizes: list[float] = []
    for site in sorted(figures):
        fig = figures[site]
        is_new = site in new_sites or fig.delta is None
        if not is_new:
            earlier.append((fig.delta, math.inf if fig.se is None else fig.se))  # type: ignore[arg-type]
            sizes.append(float(fig.samples))
        lines.append(_line(site, fig, is_new, rules, None if best is None else best.get(site), reasons))
        if fig.metric != rules.metric:
            notes.append(f"site {site}: judged by {fig.metric}; {rules.metric} is undefined on its held-out set "
                         f"(samples of each class: {list(fig.class_counts)})")
        if lines[-1].too_small:
            notes.append(_too_small(lines[-1], fig, rules))
    too_small = [line.site for line in lines if line.too_small]
    pooled_only = [line.site for line in lines if not line.new_site and not line.judged_alone]
    if not earlier:
        return Verdict(lines, reasons, too_small=too_small, notes=notes)
    delta, bound = pooled_lower_bound(earlier, rules.confidence, sizes)
    if not bound > -rules.tolerance:
        reasons.append(f"earlier sites together: mean {rules.metric} change {delta:+.3f}, lower bound {bound:+.3f} "
                       f"<= -{rules.tolerance:.3f}")
    return Verdict(lines, reasons, delta, _finite(bound), too_small, notes, pooled_only)


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) or math.isnan(x) else x


def _line(site: str, fig: SiteFigures, is_new: bool, rules: GateRules, top: float | None,
          reasons: list[str]) -> SiteGate:
    """One site's line; its failures are appended to `reasons`."""
    first = SiteGate(site=site, samples=fig.samples, candidate_accuracy=fig.candidate_accuracy,
                     production_accuracy=fig.production_accuracy, delta=None, lower_bound=None, new_site=True,
                     passed=True, metric=fig.metric, candidate_value=fig.candidate,
                     class_counts=list(fig.class_counts) or None)
    if fig.delta is None or fig.production is None:
        return first
    bound = -math.inf if fig.lower_bound is None else fig.lower_bound
    # the largest drop fewer than min_images images can make; the slack keeps a difference of two values (19/22 -
    # 21/22 is 2.0000000000000004 images in floating point) from counting as more images than it is
    few = (rules.min_images - 1) * fig.one_image + 1e-9
    passed = -fig.delta <= few or (fig.delta >= 0.0 if is_new else bound > -rules.site_tolerance)
    if not passed:
        rule = "got worse on its new site" if is_new else f"lower bound {bound:+.3f} <= -{rules.site_tolerance:.3f}"
        reasons.append(f"site {site}: {fig.metric} {fig.candidate:.3f} vs production {fig.production:.3f}; {rule}")
    top = None if is_new else top
    sign = 1.0 if fig.higher_is_better else -1.0
    if top is not None and sign * fig.optimistic < sign * top - rules.budget and sign * (top - fig.candidate) > few:
        passed = False
        reasons.append(f"site {site}: {fig.metric} {fig.candidate:.3f} vs its best {top:.3f} since it was learnt; "
                       f"more than the cumulative budget of {rules.budget:.3f} lost")
    drop = math.inf if fig.detectable_drop is None else fig.detectable_drop
    return first.model_copy(update={
        "delta": fig.delta, "lower_bound": _finite(bound), "best_value": top, "new_site": is_new, "passed": passed,
        "best_accuracy": top if fig.metric == "accuracy" else None, "production_value": fig.production,
        "se": _finite(fig.se), "detectable_drop": _finite(drop), "too_small": not drop <= rules.tolerance,
        "samples_needed": fig.samples_needed, "one_image": _finite(fig.one_image),
        "judged_alone": is_new or few < rules.site_tolerance})


def _too_small(line: SiteGate, fig: SiteFigures, rules: GateRules) -> str:
    """What a too-small held-out set can see, and how many more labelled images would let it see the tolerance."""
    sees = "cannot distinguish any change" if line.detectable_drop is None else \
        f"distinguish only changes over {line.detectable_drop:.3f}"
    more = "" if fig.samples_needed is None else f"; about {fig.samples_needed} more labelled images would close it"
    return (f"site {line.site}: its {fig.samples} held-out images {sees} in {fig.metric} at confidence "
            f"{rules.confidence:g} (tolerance {rules.tolerance:.3f}){more}")

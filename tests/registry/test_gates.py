"""The gate's bound and verdicts, on hand-made outcomes and figures."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np

from clreg.registry.gates import GateRules, SiteFigures, Verdict, judge, pooled_lower_bound, upper_bound


def outcome_figures(candidate: np.ndarray, production: np.ndarray | None, confidence: float,
                    optimistic_at: float | None = None) -> SiteFigures:
    """A site's accuracy figures from per-sample correctness on the same samples (as clreg.gating makes them from
    probabilities): the paired change, its standard error and bounds; the optimistic bound at `optimistic_at`."""
    acc = float(candidate.mean())
    alone = SiteFigures(samples=int(candidate.size), class_counts=(), metric="accuracy", candidate=acc,
                        optimistic=upper_bound(candidate, optimistic_at or confidence), candidate_accuracy=acc,
                        one_image=1.0 / max(int(candidate.size), 1))
    if production is None:
        return alone
    d = candidate.astype(np.float64) - production.astype(np.float64)
    delta, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size)
    z = NormalDist().inv_cdf(confidence)
    return replace(alone, production=float(production.mean()), production_accuracy=float(production.mean()),
                   delta=delta, lower_bound=delta - z * se, se=se, detectable_drop=z * se)


STRICT = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.95)


def _judge(candidate: dict[str, np.ndarray], production: dict[str, np.ndarray] | None, new_sites: set[str],
           rules: GateRules, best: dict[str, float] | None = None) -> Verdict:
    """judge() on per-sample correctness, as the gate judged before the task metric: accuracy figures."""
    figures = {site: outcome_figures(c, None if production is None else production.get(site), rules.confidence,
                                     rules.budget_confidence) for site, c in candidate.items()}
    return judge(figures, new_sites, rules, best)


def test_identical_models_pass_and_a_forgetful_candidate_fails() -> None:
    rng = np.random.default_rng(0)
    old = rng.random(200) < 0.9
    same = _judge({"a": old}, {"a": old}, set(), STRICT)
    assert same.lines[0].passed and same.lines[0].delta == 0.0 and same.reasons == []
    forgot = old.copy()
    forgot[:60] = False  # loses up to 60 of ~180 correct answers
    verdict = _judge({"a": forgot, "b": np.ones(50, bool)}, {"a": old, "b": np.zeros(50, bool)}, {"b"}, STRICT)
    by_site = {line.site: line for line in verdict.lines}
    assert not by_site["a"].passed and by_site["b"].passed and by_site["b"].new_site
    assert [r.split(":")[0] for r in verdict.reasons] == ["site a", "earlier sites together"]


def test_new_site_must_not_get_worse_and_no_production_passes() -> None:
    verdict = _judge({"n": np.zeros(10, bool)}, {"n": np.ones(10, bool)}, {"n"}, STRICT)
    assert not verdict.lines[0].passed and "new site" in verdict.reasons[0]
    verdict = _judge({"n": np.zeros(10, bool)}, None, {"n"}, STRICT)
    assert verdict.lines[0].passed and verdict.lines[0].production_accuracy is None and verdict.reasons == []


def test_the_pooled_bound_matches_hand_computation_and_catches_a_spread_loss() -> None:
    a_old, b_old = np.array([1, 1, 1, 1, 0, 1] * 10, bool), np.array([1, 0, 1, 1, 1, 1] * 10, bool)
    a_new, b_new = a_old.copy(), b_old.copy()
    a_new[:6], b_new[:6] = False, False  # each site loses 5 of 50 correct answers
    figures = [outcome_figures(a_new, a_old, 0.8), outcome_figures(b_new, b_old, 0.8)]
    delta, bound = pooled_lower_bound([(f.delta, f.se) for f in figures], 0.8)  # type: ignore[misc]
    d = [a_new.astype(float) - a_old, b_new.astype(float) - b_old]
    se = math.sqrt(sum(x.var(ddof=1) / x.size for x in d)) / 2
    assert math.isclose(delta, np.mean([x.mean() for x in d])) and math.isclose(bound, delta - 0.8416212335729143 * se)
    loose = GateRules(tolerance=0.05, site_tolerance=0.5, confidence=0.8)  # no single site fails on its own
    verdict = _judge({"a": a_new, "b": b_new}, {"a": a_old, "b": b_old}, set(), loose)
    assert all(line.passed for line in verdict.lines) and verdict.reasons[0].startswith("earlier sites together")
    assert verdict.pooled_delta == delta


def test_small_losses_cannot_add_up_past_the_cumulative_budget() -> None:
    rng = np.random.default_rng(1)
    best = 0.95
    version = rng.random(300) < best
    walked = []
    rules = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.95, budget=0.05)
    for _ in range(10):  # each update loses 3 points: within the paired tolerance of the one before
        candidate = version.copy()
        candidate[np.flatnonzero(candidate)[:9]] = False
        verdict = _judge({"a": candidate}, {"a": version}, set(), rules, best={"a": best})
        walked.append(verdict.lines[0].passed)
        if not verdict.lines[0].passed:
            assert "cumulative budget" in verdict.reasons[0] and verdict.lines[0].best_accuracy == best
            break
        version = candidate
    assert walked[0] and not walked[-1] and len(walked) <= 4  # stopped near the budget, not after 30 points


def test_the_budget_is_judged_family_wise_so_churn_at_one_of_twenty_sites_cannot_spend_it() -> None:
    """Twenty earlier sites of 22 images, each as good as production; one sits 3 images below its best (churn
    on a small set): judged site by site at 0.8 the budget vetoes, judged at the family-wise confidence it does
    not; a real fall of 5 images there still does."""
    best = {f"s{i:02d}": 20 / 22 for i in range(20)}
    def sites(right_at_s00: int) -> dict[str, np.ndarray]:
        return {s: np.arange(22) < (right_at_s00 if s == "s00" else 20) for s in best}
    alone, family = GateRules(budget=0.05), GateRules(budget=0.05, family=20)
    assert math.isclose(family.budget_confidence, 0.8 ** (1 / 20)) and alone.budget_confidence == 0.8
    churn = sites(17)
    assert [r.split(";")[1] for r in _judge(churn, churn, set(), alone, best).reasons] == \
        [" more than the cumulative budget of 0.050 lost"]
    assert _judge(churn, churn, set(), family, best).reasons == []
    assert _judge(sites(16), sites(16), set(), family, best).reasons == []
    fallen = sites(15)
    assert [r.split(":")[0] for r in _judge(fallen, fallen, set(), family, best).reasons] == ["site s00"]


def test_upper_bound_is_wilsons_and_new_sites_ignore_the_best() -> None:
    assert math.isclose(upper_bound(np.array([True] * 90 + [False] * 10), 0.95), 0.9393, abs_tol=1e-3)
    rules = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.95, budget=0.0)
    verdict = _judge({"n": np.zeros(20, bool)}, {"n": np.zeros(20, bool)}, {"n"}, rules, best={"n": 1.0})
    assert verdict.lines[0].passed and verdict.reasons == [] and verdict.lines[0].best_accuracy is None


def _rare_site() -> tuple[np.ndarray, np.ndarray]:
    """200 held-out samples at 10% prevalence: a candidate answering "normal" to all, and a production that finds
    10 of the 20 positives at the price of 14 false alarms (176 right: 0.88 against the candidate's 0.90)."""
    y = np.array([1] * 20 + [0] * 180)
    production = np.ones(200, bool)
    production[10:20] = False  # missed positives
    production[20:34] = False  # false alarms
    return y == 0, production


def test_a_majority_collapse_passes_on_accuracy_and_fails_on_auroc() -> None:
    candidate, production = _rare_site()
    loose = GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8)
    assert _judge({"rare": candidate}, {"rare": production}, set(), loose).reasons == []  # 0.90 vs 0.88: passes
    collapse = SiteFigures(samples=200, class_counts=(180, 20), metric="auroc", candidate=0.5, optimistic=0.5,
                           candidate_accuracy=0.9, production=0.86, production_accuracy=0.88, delta=-0.36,
                           lower_bound=-0.41, se=0.06, detectable_drop=0.0505, samples_needed=83)
    verdict = judge({"rare": collapse}, set(), GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8,
                                                          metric="auroc"))
    line = verdict.lines[0]
    assert not line.passed and line.metric == "auroc" and line.candidate_value == 0.5
    assert line.production_value == 0.86 and line.candidate_accuracy == 0.9 and line.class_counts == [180, 20]
    assert verdict.reasons == ["site rare: auroc 0.500 vs production 0.860; lower bound -0.410 <= -0.150",
                               "earlier sites together: mean auroc change -0.360, lower bound -0.410 <= -0.050"]
    assert line.too_small and verdict.too_small == ["rare"] and line.samples_needed == 83
    assert verdict.notes == ["site rare: its 200 held-out images distinguish only changes over 0.051 in auroc at "
                             "confidence 0.8 (tolerance 0.050); about 83 more labelled images would close it"]


def _cost(candidate: float, delta: float, optimistic: float) -> SiteFigures:
    """An expected-cost line: lower is better, so a fall in cost is a positive delta."""
    return SiteFigures(samples=400, class_counts=(360, 40), metric="expected_cost", candidate=candidate,
                       optimistic=optimistic, candidate_accuracy=0.9, production=candidate + delta,
                       production_accuracy=0.9, delta=delta, lower_bound=delta - 0.01, se=0.01,
                       detectable_drop=0.0084, samples_needed=0, higher_is_better=False)


def test_a_cost_is_judged_lower_is_better_and_its_budget_from_its_lowest() -> None:
    rules = GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8, budget=0.05, metric="expected_cost")
    cheaper = judge({"a": _cost(0.05, +0.03, 0.04)}, set(), rules, best={"a": 0.04})
    assert cheaper.reasons == [] and cheaper.lines[0].best_value == 0.04 and cheaper.lines[0].best_accuracy is None
    assert not cheaper.lines[0].too_small and cheaper.too_small == [] and cheaper.notes == []
    dearer = judge({"a": _cost(0.30, -0.25, 0.28)}, set(), rules, best={"a": 0.04})
    assert [r.split(";")[-1] for r in dearer.reasons] == [" lower bound -0.260 <= -0.150",
                                                          " more than the cumulative budget of 0.050 lost",
                                                          "earlier sites together: mean expected_cost change -0.250, "
                                                          "lower bound -0.258 <= -0.050"]
    drifted = judge({"a": _cost(0.10, -0.01, 0.095)}, set(), rules, best={"a": 0.04})  # 0.095 > 0.04 + 0.05
    assert [r.split(";")[-1] for r in drifted.reasons] == [" more than the cumulative budget of 0.050 lost"]
    assert judge({"a": _cost(0.10, -0.01, 0.085)}, set(), rules, best={"a": 0.04}).reasons == []


def _twenty_small_sites(lost: int, at_size: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(candidate, production) correctness at 20 earlier sites, 19 of 20 images each with the candidate as good
    as production, some churn (a right answer traded for a wrong one) and one site (`s00`, `at_size` images)
    where the candidate loses `lost` right answers."""
    rng = np.random.default_rng(1)
    sites = {}
    for i in range(20):
        n = at_size if i == 0 else 20
        prod = rng.random(n) < 0.85
        cand = prod.copy()
        if i % 3 == 1:  # churn: one answer lost, another won
            cand[np.flatnonzero(prod)[0]], cand[np.flatnonzero(~prod)[:1]] = False, True
        if i == 0:
            cand[np.flatnonzero(prod)[:lost]] = False
        sites[f"s{i:02d}"] = (cand, prod)
    return sites


def _verdict(sites: dict[str, tuple[np.ndarray, np.ndarray]], rules: GateRules) -> Verdict:
    return _judge({s: c for s, (c, _) in sites.items()}, {s: p for s, (_, p) in sites.items()}, set(), rules)


def test_two_images_at_a_20_image_site_do_not_reject_but_three_do() -> None:
    rules = GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8, min_images=3)
    two = _verdict(_twenty_small_sites(lost=2), rules)
    line = next(line for line in two.lines if line.site == "s00")
    assert line.delta == -0.1 and line.lower_bound is not None and line.lower_bound <= -0.15
    assert line.passed and two.reasons == [] and line.one_image == 0.05 and line.judged_alone
    three = _verdict(_twenty_small_sites(lost=3), rules)
    assert [r.split(";")[0] for r in three.reasons] == ["site s00: accuracy 0.750 vs production 0.900"]
    before = _verdict(_twenty_small_sites(lost=2), GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8,
                                                             min_images=1))  # the rule off: two images veto
    assert [r.split(":")[0] for r in before.reasons] == ["site s00"]


def test_a_site_too_small_to_be_judged_alone_is_named_and_a_real_drop_there_still_rejects() -> None:
    rules = GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8, min_images=3)
    churn = _verdict(_twenty_small_sites(lost=2, at_size=10), rules)  # two of 10 images: 20 points
    assert churn.reasons == [] and churn.pooled_only == ["s00"]
    assert not next(line for line in churn.lines if line.site == "s00").judged_alone
    real = _verdict(_twenty_small_sites(lost=5, at_size=10), rules)  # five of its (about) 8 right answers
    assert [r.split(":")[0] for r in real.reasons] == ["site s00"]


def test_the_pooled_change_weighs_each_site_by_its_held_out_size() -> None:
    delta, bound = pooled_lower_bound([(-0.1, 0.01), (0.0, 0.01)], 0.8, weights=[300, 100])
    assert math.isclose(delta, -0.075)
    assert math.isclose(bound, -0.075 - 0.8416212335729143 * math.sqrt(300**2 + 100**2) * 0.01 / 400)

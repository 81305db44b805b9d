"""The gate's bound and verdicts, on hand-made outcomes."""

from __future__ import annotations

import math

import numpy as np

from clreg.registry.gates import GateRules, judge, paired_lower_bound, pooled_lower_bound, upper_bound


def test_paired_lower_bound_matches_hand_computation() -> None:
    cand = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    prod = np.array([1, 0, 1, 0, 1, 1, 1, 1], dtype=bool)
    mean, bound = paired_lower_bound(cand, prod, 0.95)
    d = cand.astype(float) - prod.astype(float)  # [0,1,0,0,0,0,-1,0]
    se = d.std(ddof=1) / math.sqrt(8)
    assert mean == 0.0
    assert math.isclose(bound, -1.6448536269514722 * se, rel_tol=1e-12)


STRICT = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.95)


def test_identical_models_pass_and_a_forgetful_candidate_fails() -> None:
    rng = np.random.default_rng(0)
    old = rng.random(200) < 0.9
    same = judge({"a": old}, {"a": old}, set(), STRICT)
    assert same.lines[0].passed and same.lines[0].delta == 0.0 and same.reasons == []
    forgot = old.copy()
    forgot[:60] = False  # loses up to 60 of ~180 correct answers
    verdict = judge({"a": forgot, "b": np.ones(50, bool)}, {"a": old, "b": np.zeros(50, bool)}, {"b"}, STRICT)
    by_site = {line.site: line for line in verdict.lines}
    assert not by_site["a"].passed and by_site["b"].passed and by_site["b"].new_site
    assert [r.split(":")[0] for r in verdict.reasons] == ["site a", "earlier sites together"]


def test_new_site_must_not_get_worse_and_no_production_passes() -> None:
    verdict = judge({"n": np.zeros(10, bool)}, {"n": np.ones(10, bool)}, {"n"}, STRICT)
    assert not verdict.lines[0].passed and "new site" in verdict.reasons[0]
    verdict = judge({"n": np.zeros(10, bool)}, None, {"n"}, STRICT)
    assert verdict.lines[0].passed and verdict.lines[0].production_accuracy is None and verdict.reasons == []


def test_the_pooled_bound_matches_hand_computation_and_catches_a_spread_loss() -> None:
    a_old, b_old = np.array([1, 1, 1, 1, 0, 1] * 10, bool), np.array([1, 0, 1, 1, 1, 1] * 10, bool)
    a_new, b_new = a_old.copy(), b_old.copy()
    a_new[:6], b_new[:6] = False, False  # each site loses 5 of 50 correct answers
    delta, bound = pooled_lower_bound([(a_new, a_old), (b_new, b_old)], 0.8)
    d = [a_new.astype(float) - a_old, b_new.astype(float) - b_old]
    se = math.sqrt(sum(x.var(ddof=1) / x.size for x in d)) / 2
    assert math.isclose(delta, np.mean([x.mean() for x in d])) and math.isclose(bound, delta - 0.8416212335729143 * se)
    loose = GateRules(tolerance=0.05, site_tolerance=0.5, confidence=0.8)  # no single site fails on its own
    verdict = judge({"a": a_new, "b": b_new}, {"a": a_old, "b": b_old}, set(), loose)
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
        verdict = judge({"a": candidate}, {"a": version}, set(), rules, best={"a": best})
        walked.append(verdict.lines[0].passed)
        if not verdict.lines[0].passed:
            assert "cumulative budget" in verdict.reasons[0] and verdict.lines[0].best_accuracy == best
            break
        version = candidate
    assert walked[0] and not walked[-1] and len(walked) <= 4  # stopped near the budget, not after 30 points


def test_upper_bound_is_wilsons_and_new_sites_ignore_the_best() -> None:
    assert math.isclose(upper_bound(np.array([True] * 90 + [False] * 10), 0.95), 0.9393, abs_tol=1e-3)
    rules = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.95, budget=0.0)
    verdict = judge({"n": np.zeros(20, bool)}, {"n": np.zeros(20, bool)}, {"n"}, rules, best={"n": 1.0})
    assert verdict.lines[0].passed and verdict.reasons == [] and verdict.lines[0].best_accuracy is None

"""The gate's bound and verdicts, on hand-made outcomes."""

from __future__ import annotations

import math

import numpy as np

from registry.gates import judge, paired_lower_bound


def test_paired_lower_bound_matches_hand_computation() -> None:
    cand = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    prod = np.array([1, 0, 1, 0, 1, 1, 1, 1], dtype=bool)
    mean, bound = paired_lower_bound(cand, prod, 0.95)
    d = cand.astype(float) - prod.astype(float)  # [0,1,0,0,0,0,-1,0]
    se = d.std(ddof=1) / math.sqrt(8)
    assert mean == 0.0
    assert math.isclose(bound, -1.6448536269514722 * se, rel_tol=1e-12)


def test_identical_models_pass_and_a_forgetful_candidate_fails() -> None:
    rng = np.random.default_rng(0)
    old = rng.random(200) < 0.9
    same, _ = judge({"a": old}, {"a": old}, set(), tolerance=0.05, confidence=0.95)
    assert same[0].passed and same[0].delta == 0.0
    forgot = old.copy()
    forgot[:60] = False  # loses up to 60 of ~180 correct answers
    lines, reasons = judge({"a": forgot, "b": np.ones(50, bool)}, {"a": old, "b": np.zeros(50, bool)},
                           {"b"}, tolerance=0.05, confidence=0.95)
    by_site = {line.site: line for line in lines}
    assert not by_site["a"].passed and by_site["b"].passed and by_site["b"].new_site
    assert len(reasons) == 1 and reasons[0].startswith("site a:")


def test_new_site_must_not_get_worse_and_no_production_passes() -> None:
    lines, reasons = judge({"n": np.zeros(10, bool)}, {"n": np.ones(10, bool)}, {"n"}, 0.05, 0.95)
    assert not lines[0].passed and "new site" in reasons[0]
    lines, reasons = judge({"n": np.zeros(10, bool)}, None, {"n"}, 0.05, 0.95)
    assert lines[0].passed and lines[0].production_accuracy is None and reasons == []

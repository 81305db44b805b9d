"""Operating points on a hand-counted case; the threshold for a target sensitivity is the most specific one, the
expected-cost threshold the cheapest at a prevalence; each figure's interval, and when held-out evidence is too thin
to choose a threshold by cost."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.operating import (
    Costs,
    cost_threshold_shortfall,
    expected_cost,
    operating_point,
    point_interval,
    threshold_for_cost,
    threshold_for_sensitivity,
)
from clreg.learner.taskmetric import Scoring, interval

SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
LABELS = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0])  # 4 positives among 10


def test_operating_point_on_a_hand_case() -> None:
    p = operating_point(SCORES, LABELS, 0.6)  # flags the first 5: TP 3, FP 2, FN 1, TN 4
    assert (p.samples, p.prevalence, p.flagged) == (10, 0.4, 0.5)
    assert p.sensitivity == pytest.approx(3 / 4) and p.specificity == pytest.approx(4 / 6)
    assert p.ppv == pytest.approx(3 / 5) and p.npv == pytest.approx(4 / 5)


def test_empty_denominators_are_none_not_guesses() -> None:
    p = operating_point(SCORES, LABELS, 0.99)  # nothing flagged
    assert p.ppv is None and p.sensitivity == 0.0 and p.specificity == 1.0
    assert operating_point(SCORES[LABELS == 0], LABELS[LABELS == 0], 0.5).sensitivity is None


@pytest.mark.parametrize(("target", "expected"), [(0.25, 0.95), (0.5, 0.9), (0.75, 0.7), (1.0, 0.4), (0.6, 0.7)])
def test_threshold_for_sensitivity_is_the_highest_that_reaches_it(target: float, expected: float) -> None:
    t = threshold_for_sensitivity(SCORES, LABELS, target)
    assert t == expected
    assert operating_point(SCORES, LABELS, t).sensitivity >= target
    assert operating_point(SCORES, LABELS, np.nextafter(t, 1.0)).sensitivity < target  # any higher misses it


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(DataError, match="binary"):
        operating_point(SCORES, np.arange(10) % 3, 0.5)
    with pytest.raises(DataError, match="no positive"):
        threshold_for_sensitivity(SCORES, np.zeros(10), 0.9)
    with pytest.raises(DataError, match="one score per label"):
        operating_point(SCORES[:3], LABELS, 0.5)


def test_expected_cost_on_the_hand_case() -> None:
    costs = Costs(false_positive=1.0, false_negative=10.0)
    # t=0.6: 2 of 6 negatives flagged, 1 of 4 positives missed, at the held-out prevalence 0.4
    point = operating_point(SCORES, LABELS, 0.6)
    assert expected_cost(point, costs) == pytest.approx(1 * 2 / 6 * 0.6 + 10 * 0.25 * 0.4)
    # the same threshold priced at another prevalence: sensitivity and specificity carry over
    assert expected_cost(point, costs, 0.1) == pytest.approx(2 / 6 * 0.9 + 2.5 * 0.1)


@pytest.mark.parametrize(("fp", "fn", "prevalence", "expected"), [
    (1.0, 10.0, None, 0.4),  # a miss costs 10 false alarms: flag down to the last positive (cost 0.2)
    (1.0, 1.0, None, 0.9),  # 0.4, 0.7 and 0.9 all cost 0.2: the highest (fewest flagged) wins the tie
    (10.0, 1.0, None, 0.9),  # false alarms dear: only flag what no negative reaches
])
def test_threshold_for_cost_is_the_cheapest(fp: float, fn: float, prevalence: float | None, expected: float) -> None:
    costs = Costs(false_positive=fp, false_negative=fn)
    t = threshold_for_cost(SCORES, LABELS, costs, prevalence)
    assert t == expected
    best = expected_cost(operating_point(SCORES, LABELS, t), costs, prevalence)
    assert all(best <= expected_cost(operating_point(SCORES, LABELS, s), costs, prevalence) + 1e-12 for s in SCORES)


def test_where_nobody_is_ill_the_cheapest_rule_flags_nobody() -> None:
    t = threshold_for_cost(SCORES, LABELS, Costs(false_positive=1.0, false_negative=10.0), prevalence=0.0)
    assert operating_point(SCORES, LABELS, t).flagged == 0.0 and t <= 1.0


def test_costs_and_one_class_labels_are_refused() -> None:
    with pytest.raises(DataError, match="costs"):
        Costs(false_positive=-1.0, false_negative=1.0)
    with pytest.raises(DataError, match="positive and negative"):
        threshold_for_cost(SCORES, np.ones(10), Costs(false_positive=1.0, false_negative=1.0))


def test_point_interval_on_the_hand_case() -> None:
    # t=0.6 finds 3 of the 4 positives and clears 4 of the 6 negatives; resampling each class within itself, the
    # 2.5% and 97.5% points are those of Binomial(4, 3/4) / 4 and Binomial(6, 4/6) / 6
    spread = point_interval(SCORES, LABELS, 0.6, Costs(false_positive=1.0, false_negative=10.0))
    assert (spread.positives, spread.negatives) == (4, 6)
    assert spread.sensitivity_interval == (0.25, 1.0) and spread.specificity_interval == pytest.approx((1 / 3, 1.0))
    low, high = spread.expected_cost_interval or (9.0, -9.0)
    assert low <= 1 * 2 / 6 * 0.6 + 10 * 0.25 * 0.4 <= high
    assert point_interval(SCORES, LABELS, 0.6).expected_cost_interval is None  # no costs, no cost interval
    assert point_interval(SCORES, LABELS, 0.6, seed=1) == point_interval(SCORES, LABELS, 0.6, seed=1)  # seeded


def test_the_cost_interval_is_the_task_metrics_stratified_bootstrap() -> None:
    proba = np.stack([1 - SCORES, SCORES], axis=1)
    for prevalence in (None, 0.1):
        spread = point_interval(SCORES, LABELS, 0.6, Costs(false_positive=1.0, false_negative=10.0), prevalence)
        scoring = Scoring("expected_cost", cost_fp=1.0, cost_fn=10.0, threshold=0.6, prevalence=prevalence)
        assert spread.expected_cost_interval == pytest.approx(interval(scoring, LABELS, proba))


def test_the_interval_narrows_with_positives_and_is_none_without_them() -> None:
    few = point_interval(np.r_[np.ones(4), np.zeros(1), np.zeros(40)], np.r_[np.ones(5), np.zeros(40)], 0.5)
    many = point_interval(np.r_[np.ones(40), np.zeros(10), np.zeros(40)], np.r_[np.ones(50), np.zeros(40)], 0.5)
    assert few.sensitivity_interval == (0.4, 1.0)  # 4 of 5 found: new images could see 2 of 5 found
    assert many.sensitivity_interval[0] > 0.65 and many.sensitivity_interval[1] < 0.92
    healthy = point_interval(SCORES[LABELS == 0], LABELS[LABELS == 0], 0.5, Costs(1.0, 1.0))
    assert healthy.sensitivity_interval is None and healthy.positives == 0 and healthy.specificity_interval


def test_a_cost_threshold_on_too_few_of_a_class_is_not_recommended() -> None:
    five = np.r_[np.ones(5), np.zeros(40)]
    assert cost_threshold_shortfall(five, 10, 10) == (
        "5 positives in the held-out set, fewer than the 10 needed to choose a threshold by cost; use 0.5 or push "
        "more labelled positives")
    assert cost_threshold_shortfall(five, 5, 10) is None
    assert cost_threshold_shortfall(np.r_[np.ones(1), np.zeros(3)], 10, 3) == (
        "1 positive in the held-out set, fewer than the 10 needed to choose a threshold by cost; use 0.5 or push "
        "more labelled positives")
    both = cost_threshold_shortfall(LABELS, 10, 10) or ""
    assert both.startswith("4 positives in the held-out set, fewer than the 10 needed")
    assert "; 6 negatives in the held-out set" in both and both.endswith("push more labelled positives and negatives")

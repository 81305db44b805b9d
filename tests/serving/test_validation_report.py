"""The validation report's binary figures and its page: the threshold priced at the site's prevalence, PPV and
NPV by Bayes' rule across prevalences, and the charts drawn inline."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from clreg.learner.operating import Costs
from clreg.registry.findings import SiteCalibration
from clreg.serving.validation import _binary, render_html


def _fit() -> SiteCalibration:
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = np.clip(labels * 0.5 + rng.normal(0.25, 0.2, size=200), 0, 1)
    return SiteCalibration(temperature=1.0, samples=200, ece=0.1, ece_calibrated=0.04, nll=0.4, nll_calibrated=0.3,
                           scores=scores.round(6).tolist(), labels=labels.tolist(), accuracy=0.9,
                           accuracy_interval=(0.85, 0.94), error_calibrated=0.02, ece_floor=0.05,
                           reliability_before=[(0.6, 0.7, 80), (0.9, 0.8, 120)],
                           reliability_after=[(0.65, 0.7, 80), (0.85, 0.84, 120)])


def test_the_threshold_is_priced_from_the_confusion_matrix_at_each_prevalence() -> None:
    fit = _fit()
    out = _binary(fit, 0.4, 0.1, Costs(false_positive=1.0, false_negative=10.0))
    tn, fp, fn, tp = confusion_matrix(fit.labels, np.array(fit.scores) >= 0.4).ravel()
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    point = out["threshold"]
    assert point["sensitivity"] == pytest.approx(sens) and point["specificity"] == pytest.approx(spec)
    assert point["expected_cost"] == pytest.approx(1.0 * (1 - spec) * 0.9 + 10.0 * (1 - sens) * 0.1)
    at = {c["prevalence"]: c for c in out["ppv_npv_curve"]}
    p = 0.02
    assert at[p]["ppv"] == pytest.approx(sens * p / (sens * p + (1 - spec) * (1 - p)))
    assert at[p]["npv"] == pytest.approx(spec * (1 - p) / (spec * (1 - p) + (1 - sens) * p))
    assert 0.1 in at  # the site's own prevalence is on the curve


def test_the_page_draws_the_reliability_diagram_and_the_curve_without_script() -> None:
    fit = _fit()
    report = {"site": "s", "model": "m", "version": 2, "validated": True, "reasons": [], "rules": {},
              "heldout": fit.model_dump(exclude={"scores", "labels"}),
              **_binary(fit, 0.4, 0.1, Costs(false_positive=1.0, false_negative=10.0))}
    page = render_html(report)
    assert page.count("<svg") == 2 and "<script" not in page
    assert len(re.findall(r"<circle ", page)) == 4  # two bins before, two after
    assert page.count("<polyline") == 2  # PPV and NPV
    assert "0.050" in page and "0.020" in page  # the ECE floor and the debiased error


def test_the_page_says_how_the_site_is_served_now() -> None:
    fit = _fit()
    report = {"site": "s", "model": "m", "version": 2, "validated": True, "reasons": [], "rules": {},
              "heldout": fit.model_dump(exclude={"scores", "labels"}),
              "served": {"estimate": 0.861, "answers": 480,
                         "checked": {"estimate": 0.5, "stable": 0.5375, "answers": 160, "version": 2, "at": 1.0}}}
    page = render_html(report)
    assert "Served now, without labels" in page and "0.861" in page and "480" in page
    assert "0.500" in page and "0.537" in page and "160, v2" in page
    assert "Served now" not in render_html({**report, "served": None})

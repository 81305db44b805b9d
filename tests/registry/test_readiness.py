"""Readiness: a site is validated only when the accuracy's lower bound reaches the floor and ECE is in bounds."""

from __future__ import annotations

from clreg.registry.readiness import assess, assess_sites
from clreg.registry.records import Calibration, Readiness, SiteCalibration


def _site(accuracy: float | None, low: float, ece: float) -> SiteCalibration:
    return SiteCalibration(temperature=1.0, samples=100, ece=0.1, ece_calibrated=ece, nll=0.3, nll_calibrated=0.3,
                           accuracy=accuracy, accuracy_interval=None if accuracy is None else (low, 0.99))


CAL = Calibration(model="m", pooled=_site(None, 0, 0.05), sites={
    "good": _site(0.93, 0.88, 0.03), "weak": _site(0.85, 0.78, 0.03), "overconfident": _site(0.95, 0.9, 0.12),
    "old": _site(None, 0, 0.03)})


def test_only_sites_that_meet_both_rules_are_validated() -> None:
    ready = assess_sites(CAL, Readiness(accuracy_floor=0.8, ece_limit=0.1))
    assert {s: r.validated for s, r in ready.items()} == {"good": True, "weak": False, "overconfident": False,
                                                           "old": False}
    assert ready["good"].reasons == []
    assert "0.780" in ready["weak"].reasons[0] and "floor 0.8" in ready["weak"].reasons[0]
    assert "ECE 0.120" in ready["overconfident"].reasons[0]
    assert "before site validation" in ready["old"].reasons[0]


def test_a_site_never_learnt_is_not_validated_and_rules_are_per_model() -> None:
    assert not assess("elsewhere", CAL, Readiness()).validated
    assert "never learnt" in assess("elsewhere", None, Readiness()).reasons[0]
    assert assess("weak", CAL, Readiness(accuracy_floor=0.75)).validated  # a lower floor for this model


def test_the_debiased_calibration_error_decides_where_a_version_has_it() -> None:
    noisy_but_calibrated = _site(0.93, 0.88, 0.12).model_copy(update={"error_calibrated": 0.02, "ece_floor": 0.09})
    miscalibrated = _site(0.93, 0.88, 0.04).model_copy(update={"error_calibrated": 0.15})
    cal = Calibration(model="m", pooled=_site(None, 0, 0.05), sites={"a": noisy_but_calibrated, "b": miscalibrated})
    ready = assess_sites(cal, Readiness(ece_limit=0.1))
    assert ready["a"].validated and not ready["b"].validated
    assert "calibration error 0.150" in ready["b"].reasons[0] and "ECE 0.040" in ready["b"].reasons[0]

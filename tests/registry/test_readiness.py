"""Readiness: a site is validated only when the task metric's interval clears its bound (versions before it: the
accuracy's lower bound reaches the floor), a binary site has enough of each class, and ECE is in bounds."""

from __future__ import annotations

from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.readiness import assess, assess_sites
from clreg.registry.records import Readiness


def _site(accuracy: float | None, low: float, ece: float) -> SiteCalibration:
    return SiteCalibration(temperature=1.0, samples=100, ece=0.1, ece_calibrated=ece, nll=0.3, nll_calibrated=0.3,
                           accuracy=accuracy, accuracy_interval=None if accuracy is None else (low, 0.99))


CAL = Calibration(model="m", pooled=_site(None, 0, 0.05), sites={
    "good": _site(0.93, 0.88, 0.03), "weak": _site(0.85, 0.78, 0.03), "overconfident": _site(0.95, 0.9, 0.12),
    "old": _site(None, 0, 0.03)})


def test_only_sites_that_meet_both_rules_are_validated() -> None:
    ready = assess_sites(CAL, Readiness(accuracy_floor=0.8, ece_limit=0.1), "accuracy")
    assert {s: r.validated for s, r in ready.items()} == {"good": True, "weak": False, "overconfident": False,
                                                           "old": False}
    assert ready["good"].reasons == []
    assert "0.780" in ready["weak"].reasons[0] and "floor 0.8" in ready["weak"].reasons[0]
    assert "ECE 0.120" in ready["overconfident"].reasons[0]
    assert "before site validation" in ready["old"].reasons[0]


def test_a_site_never_learnt_is_not_validated_and_rules_are_per_model() -> None:
    assert not assess("elsewhere", CAL, Readiness(), "accuracy").validated
    assert "never learnt" in assess("elsewhere", None, Readiness(), "auroc").reasons[0]
    assert assess("weak", CAL, Readiness(accuracy_floor=0.75), "accuracy").validated  # a lower floor for this model


def test_the_debiased_calibration_error_decides_where_a_version_has_it() -> None:
    noisy_but_calibrated = _site(0.93, 0.88, 0.12).model_copy(update={"error_calibrated": 0.02, "ece_floor": 0.09})
    miscalibrated = _site(0.93, 0.88, 0.04).model_copy(update={"error_calibrated": 0.15})
    cal = Calibration(model="m", pooled=_site(None, 0, 0.05), sites={"a": noisy_but_calibrated, "b": miscalibrated})
    ready = assess_sites(cal, Readiness(ece_limit=0.1), "accuracy")
    assert ready["a"].validated and not ready["b"].validated
    assert "calibration error 0.150" in ready["b"].reasons[0] and "ECE 0.040" in ready["b"].reasons[0]


def _binary(metric: str, value: float, low: float, high: float, counts: list[int], baseline: float = 0.5,
            accuracy: tuple[float, float] = (0.9, 0.84)) -> SiteCalibration:
    """A binary site's record with its task metric (and, as versions before it judged, accuracy)."""
    return _site(accuracy[0], accuracy[1], 0.03).model_copy(update={
        "samples": sum(counts), "metric": metric, "metric_value": value, "metric_interval": (low, high),
        "metric_baseline": baseline, "class_counts": counts})


def test_five_positives_do_not_validate_a_binary_model() -> None:
    # the site: 5 positives among 45 held-out images, a good AUROC, an accuracy of 0.933
    five = _binary("auroc", 0.96, 0.86, 1.0, [40, 5], accuracy=(0.933, 0.86))
    ready = assess("screen", Calibration(model="m", pooled=five, sites={"screen": five}), Readiness(), "auroc")
    assert not ready.validated
    assert ready.reasons == ["5 positives in the held-out set, fewer than the 10 needed to validate a binary "
                             "model: push more labelled positives"]
    few_negatives = _binary("auroc", 0.96, 0.86, 1.0, [1, 30])
    ready = assess("s", Calibration(model="m", pooled=few_negatives, sites={"s": few_negatives}), Readiness(), "auroc")
    assert ready.reasons == ["1 negative in the held-out set, fewer than the 10 needed to validate a binary model: "
                             "push more labelled negatives"]
    ready = assess("screen", Calibration(model="m", pooled=five, sites={"screen": five}),
                   Readiness(min_positives=5), "auroc")
    assert ready.validated  # a model may ask for less evidence


def test_a_binary_site_is_validated_by_its_auroc_interval() -> None:
    sites = {"good": _binary("auroc", 0.93, 0.86, 0.98, [180, 20], accuracy=(0.85, 0.7)),
             "vague": _binary("auroc", 0.85, 0.74, 0.94, [180, 20], accuracy=(0.95, 0.92))}
    ready = assess_sites(Calibration(model="m", pooled=sites["good"], sites=sites), Readiness(), "auroc")
    assert ready["good"].validated  # its accuracy interval (from 0.70) would have failed the old floor
    assert ready["vague"].reasons == ["held-out auroc 0.850 (95% interval from 0.740, 200 samples) does not reach "
                                      "the floor 0.8"]
    assert assess_sites(Calibration(model="m", pooled=sites["good"], sites=sites), Readiness(metric_floor=0.7),
                        "auroc")["vague"].validated


def test_a_majority_answer_at_a_10_percent_site_is_not_validated() -> None:
    # "normal" to everything: accuracy 0.9 from 0.86 would pass the old floor 0.8; its AUROC is 0.5, no better than
    # a constant; judged by accuracy, its interval does not beat the majority's 0.9 either
    by_auroc = _binary("auroc", 0.5, 0.5, 0.5, [180, 20], accuracy=(0.9, 0.86))
    by_accuracy = _binary("accuracy", 0.9, 0.9, 0.9, [180, 20], baseline=0.9, accuracy=(0.9, 0.86))
    cal = Calibration(model="m", pooled=by_auroc, sites={"a": by_auroc, "b": by_accuracy})
    assert assess("a", cal, Readiness(), "auroc").reasons == [
        "held-out auroc 0.500 (95% interval from 0.500, 200 samples) does not reach the floor 0.8",
        "held-out auroc 0.500 (95% interval from 0.500, 200 samples) is no better than answering every image the "
        "same class (0.500)"]
    assert assess("b", cal, Readiness(accuracy_floor=0.8), "accuracy").reasons == [
        "held-out accuracy 0.900 (95% interval from 0.900, 200 samples) is no better than answering every image the "
        "same class (0.900)"]
    old = _site(0.9, 0.86, 0.03)  # the same site under a version made before the task metric: today's rule
    assert assess("old", Calibration(model="m", pooled=old, sites={"old": old}), Readiness(), "auroc").validated


def test_expected_cost_is_judged_by_its_upper_bound() -> None:
    # the constant answer costs 0.9 per case here (flag everyone at 1 per false alarm, 90% negatives)
    cheap = _binary("expected_cost", 0.3, 0.2, 0.45, [90, 10], baseline=0.9)
    dear = _binary("expected_cost", 0.7, 0.5, 0.95, [90, 10], baseline=0.9)
    cal = Calibration(model="m", pooled=cheap, sites={"cheap": cheap, "dear": dear})
    assert assess("cheap", cal, Readiness(), "expected_cost").validated
    assert assess("dear", cal, Readiness(), "expected_cost").reasons == [
        "held-out expected cost per case 0.700 (95% interval up to 0.950, 100 samples) is not below 0.900, what "
        "answering every image the same class costs"]
    assert assess("cheap", cal, Readiness(cost_limit=0.4), "expected_cost").reasons == [
        "held-out expected cost per case 0.300 (95% interval up to 0.450, 100 samples) does not stay under the "
        "limit 0.4"]


def test_figures_for_another_metric_or_an_undefined_one_do_not_validate() -> None:
    auroc = _binary("auroc", 0.93, 0.86, 0.98, [180, 20])
    healthy = auroc.model_copy(update={"metric_value": None, "metric_interval": None, "class_counts": [30, 0]})
    cal = Calibration(model="m", pooled=auroc, sites={"a": auroc, "healthy": healthy})
    assert "are for auroc, not the model's metric balanced_accuracy" in assess(
        "a", cal, Readiness(), "balanced_accuracy").reasons[0]
    assert assess("healthy", cal, Readiness(), "auroc").reasons == [
        "held-out auroc is undefined at this site (class counts [30, 0]): both classes are needed",
        "0 positives in the held-out set, fewer than the 10 needed to validate a binary model: push more labelled "
        "positives"]

"""Whether a version is fit for use at a site: its held-out figures against the model's readiness rules.

A version records its task metric per site with a 95% interval (clreg.calibration); that interval is judged, not
the point figure and never accuracy alone at a binary site: at a 10% site a model answering "normal" to everything
scores 0.9 accuracy. A binary site also needs enough positives and negatives for any figure to mean something.
Versions made before the metric was recorded are judged on accuracy as they always were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.records import Readiness

AUROC_FLOOR = 0.8  # the auroc interval's low end must reach it unless the model sets metric_floor


@dataclass(frozen=True)
class SiteReadiness:
    site: str
    validated: bool
    reasons: list[str] = field(default_factory=list)  # why not, one line each; empty when validated


def assess(site: str, calibration: Calibration | None, rules: Readiness, metric: str) -> SiteReadiness:
    """Validated only when the model's task metric (`metric`: Model.task_metric) clears its bound at the lower
    (upper, for a cost) end of its 95% interval, a binary site's held-out set has min_positives and min_negatives,
    and the calibrated calibration error (debiased where the version has it: a small held-out set inflates the
    binned ECE) is within the limit. Versions without metric figures are judged on accuracy's interval."""
    figures = calibration.sites.get(site) if calibration is not None else None
    if figures is None:
        return SiteReadiness(site, False, [f"the version never learnt site {site!r}: no held-out data there"])
    if figures.metric is not None:
        reasons = _metric_reasons(figures, rules, metric) + _evidence_reasons(figures, rules)
    elif figures.accuracy is None or figures.accuracy_interval is None:
        return SiteReadiness(site, False, ["the version has no validation figures (made before site validation)"])
    else:
        reasons = _accuracy_reasons(figures, rules)
    reasons += _calibration_reasons(figures, rules)
    return SiteReadiness(site, not reasons, reasons)


def _accuracy_reasons(figures: SiteCalibration, rules: Readiness) -> list[str]:
    """The rule of versions made before the task metric was recorded: accuracy's lower bound against the floor."""
    low = figures.accuracy_interval[0] if figures.accuracy_interval else 0.0
    if low >= rules.accuracy_floor:
        return []
    return [f"held-out accuracy {figures.accuracy:.3f} (95% interval from {low:.3f}, {figures.samples} samples) "
            f"does not reach the floor {rules.accuracy_floor:g}"]


def metric_floor(rules: Readiness, metric: str) -> float:
    """The floor the metric's lower bound must reach: the model's metric_floor, else accuracy_floor for accuracy
    and balanced accuracy and AUROC_FLOOR for auroc."""
    if rules.metric_floor is not None:
        return rules.metric_floor
    return AUROC_FLOOR if metric == "auroc" else rules.accuracy_floor


def _metric_reasons(figures: SiteCalibration, rules: Readiness, metric: str) -> list[str]:
    if figures.metric != metric:
        return [f"the version's held-out figures are for {figures.metric}, not the model's metric {metric}: train "
                "a new version to judge it"]
    if figures.metric_value is None or figures.metric_interval is None:
        return [f"held-out {metric} is undefined at this site (class counts {figures.class_counts}): both classes "
                "are needed"]
    return _cost_reasons(figures, rules) if metric == "expected_cost" else _floor_reasons(figures, rules, metric)


def _floor_reasons(figures: SiteCalibration, rules: Readiness, metric: str) -> list[str]:
    """The metric's lower bound must reach the floor and beat the best constant answer."""
    value, (low, _), base = figures.metric_value, figures.metric_interval or (0.0, 0.0), figures.metric_baseline
    said = f"held-out {metric} {value:.3f} (95% interval from {low:.3f}, {figures.samples} samples)"
    floor = metric_floor(rules, metric)
    out = [] if low >= floor else [f"{said} does not reach the floor {floor:g}"]
    if base is not None and low <= base:
        out.append(f"{said} is no better than answering every image the same class ({base:.3f})")
    return out


def _cost_reasons(figures: SiteCalibration, rules: Readiness) -> list[str]:
    """The expected cost's upper bound must stay under the best constant answer's cost and the model's limit."""
    value, (_, high), base = figures.metric_value, figures.metric_interval or (0.0, 0.0), figures.metric_baseline
    said = f"held-out expected cost per case {value:.3f} (95% interval up to {high:.3f}, {figures.samples} samples)"
    out = [] if base is None or high < base else [
        f"{said} is not below {base:.3f}, what answering every image the same class costs"]
    if rules.cost_limit is not None and high >= rules.cost_limit:
        out.append(f"{said} does not stay under the limit {rules.cost_limit:g}")
    return out


def _evidence_reasons(figures: SiteCalibration, rules: Readiness) -> list[str]:
    """A binary site's held-out set must hold min_positives and min_negatives: an interval on 5 positives is wide,
    and a figure on them says little about the next 5."""
    counts = figures.class_counts or []
    if len(counts) != 2:
        return []
    out = []
    needs = (("positive", counts[1], rules.min_positives), ("negative", counts[0], rules.min_negatives))
    for kind, have, need in needs:
        if have < need:
            out.append(f"{have} {kind}{'' if have == 1 else 's'} in the held-out set, fewer than the {need} needed to "
                       f"validate a binary model: push more labelled {kind}s")
    return out


def _calibration_reasons(figures: SiteCalibration, rules: Readiness) -> list[str]:
    if figures.error_calibrated is not None and figures.error_calibrated > rules.ece_limit:
        return [f"calibration error {figures.error_calibrated:.3f} (debiased, after calibration; ECE "
                f"{figures.ece_calibrated:.3f}) is above the limit {rules.ece_limit:g}"]
    if figures.error_calibrated is None and figures.ece_calibrated > rules.ece_limit:
        return [f"calibrated ECE {figures.ece_calibrated:.3f} is above the limit {rules.ece_limit:g}"]
    return []


def assess_sites(calibration: Calibration | None, rules: Readiness, metric: str) -> dict[str, SiteReadiness]:
    """Every learnt site's readiness under one version, judged by the model's task metric (Model.task_metric)."""
    return {s: assess(s, calibration, rules, metric) for s in (calibration.sites if calibration else {})}

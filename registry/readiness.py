"""Whether a version is fit for use at a site: its held-out figures against the model's readiness rules."""

from __future__ import annotations

from dataclasses import dataclass, field

from clreg.registry.records import Calibration, Readiness


@dataclass(frozen=True)
class SiteReadiness:
    site: str
    validated: bool
    reasons: list[str] = field(default_factory=list)  # why not, one line each; empty when validated


def assess(site: str, calibration: Calibration | None, rules: Readiness) -> SiteReadiness:
    """Validated only when the accuracy's lower 95% bound reaches the floor and the calibrated calibration error
    (debiased where the version has it: a small held-out set inflates the binned ECE) is within the limit."""
    figures = calibration.sites.get(site) if calibration is not None else None
    if figures is None:
        return SiteReadiness(site, False, [f"the version never learnt site {site!r}: no held-out data there"])
    if figures.accuracy is None or figures.accuracy_interval is None:
        return SiteReadiness(site, False, ["the version has no validation figures (made before site validation)"])
    reasons = []
    low = figures.accuracy_interval[0]
    if low < rules.accuracy_floor:
        reasons.append(f"held-out accuracy {figures.accuracy:.3f} (95% interval from {low:.3f}, "
                       f"{figures.samples} samples) does not reach the floor {rules.accuracy_floor:g}")
    if figures.error_calibrated is not None and figures.error_calibrated > rules.ece_limit:
        reasons.append(f"calibration error {figures.error_calibrated:.3f} (debiased, after calibration; ECE "
                       f"{figures.ece_calibrated:.3f}) is above the limit {rules.ece_limit:g}")
    elif figures.error_calibrated is None and figures.ece_calibrated > rules.ece_limit:
        reasons.append(f"calibrated ECE {figures.ece_calibrated:.3f} is above the limit {rules.ece_limit:g}")
    return SiteReadiness(site, not reasons, reasons)


def assess_sites(calibration: Calibration | None, rules: Readiness) -> dict[str, SiteReadiness]:
    """Every learnt site's readiness under one version."""
    return {s: assess(s, calibration, rules) for s in (calibration.sites if calibration else {})}

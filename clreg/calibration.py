"""Calibrate: fit one temperature per learnt site on its held-out set; the result is a version artifact.

Each site's record also carries the model's task metric on the held-out labels and the cross-fitted calibrated
probabilities, with its interval and class counts: what readiness judges the version by there.
"""

from __future__ import annotations

import numpy as np

from clreg.gating import scoring_of
from clreg.learner.calibration import CalibrationFit, calibrate_sites, proba_nll, scaled_proba
from clreg.learner.evaluate import calibration_error, ece_floor, expected_calibration_error
from clreg.learner.taskmetric import DRAWS, Scoring
from clreg.learner.validation import metric_figures, site_figures
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.records import Model
from clreg.scores import Scores


def calibrate_version(model: Model, scored: Scores, seed: int) -> Calibration:
    """Per-site temperatures of a version from its held-out logits (clreg.scores: as /v1/predict computes them)."""
    logits = {site: (s.logits, s.labels) for site, s in scored.items()}
    pooled, sites = calibrate_sites(logits, seed=seed)
    scoring = scoring_of(model)
    return Calibration(model=model.name, pooled=site_record(pooled), sites={
        s: site_record(fit, *logits[s], scoring=scoring, seed=seed) for s, fit in sites.items()})


def site_record(fit: CalibrationFit, logits: np.ndarray | None = None, labels: np.ndarray | None = None,
                scoring: Scoring | None = None, seed: int = 0, draws: int = DRAWS) -> SiteCalibration:
    """A site's calibration with its validation figures (the pooled record, without labels, has none)."""
    record = SiteCalibration(temperature=fit.temperature, samples=fit.samples, ece=fit.ece,
                             ece_calibrated=fit.ece_calibrated, nll=fit.nll, nll_calibrated=fit.nll_calibrated,
                             error_calibrated=fit.error_calibrated, ece_floor=fit.ece_floor)
    if logits is None or labels is None:
        return record
    figures = site_figures(labels, scaled_proba(logits, 1.0), fit.out_of_fold, seed=seed)
    binary = fit.out_of_fold.shape[1] == 2
    metric = metric_figures(scoring or Scoring(), labels, fit.out_of_fold, seed=seed, draws=draws)
    return record.model_copy(update={
        "metric": metric.metric, "metric_value": metric.value, "metric_interval": metric.interval,
        "metric_baseline": metric.baseline, "class_counts": metric.class_counts,
        "scores": fit.out_of_fold[:, 1].round(6).tolist() if binary else None,
        "labels": labels.astype(int).tolist() if binary else None,
        "accuracy": figures.accuracy, "accuracy_interval": figures.accuracy_interval,
        "sensitivity": figures.sensitivity, "reliability_before": figures.reliability_before,
        "reliability_after": figures.reliability_after})


def fixed_record(model: Model, logits: np.ndarray, labels: np.ndarray, temperature: float,
                 seed: int = 0) -> SiteCalibration:
    """A site's figures on samples nothing was fitted on (a locked test set) at the temperature the version serves
    there: the task metric with its interval, accuracy, calibration error before and after scaling, as readiness reads
    them from a held-out set."""
    labels = np.asarray(labels).astype(np.int64)
    raw, after = scaled_proba(logits, 1.0), scaled_proba(logits, temperature)
    fit = CalibrationFit(temperature=temperature, samples=len(labels), ece=expected_calibration_error(labels, raw),
                         ece_calibrated=expected_calibration_error(labels, after), nll=proba_nll(raw, labels),
                         nll_calibrated=proba_nll(after, labels), error_calibrated=calibration_error(labels, after),
                         ece_floor=ece_floor(after), out_of_fold=after)
    return site_record(fit, logits, labels, scoring=scoring_of(model), seed=seed)

"""Calibrate: fit one temperature per learnt site on its held-out set; the result is a version artifact."""

from __future__ import annotations

import numpy as np

from clreg.context import Stores
from learner.answer import Answerer
from learner.calibration import CalibrationFit, calibrate_sites
from learner.evaluate import predict_logits
from learner.models import to_tensor
from learner.sitebn import Bank
from registry.records import Calibration, Model, SiteCalibration


def calibrate_version(stores: Stores, model: Model, weights_sha: str, bank: Bank | None, batch_ids: list[str],
                      seed: int) -> Calibration:
    """Per-site temperatures of a trained network, each site's logits taken as /v1/predict computes them."""
    answerer = Answerer.of(stores.module(model, weights_sha), bank)
    scored = {}
    for site, (x, y) in stores.split_by_site(model, batch_ids, "heldout").items():
        net, _, _ = answerer.pick(site, to_tensor(x))
        scored[site] = (predict_logits(net, x), y)
    pooled, sites = calibrate_sites(scored, seed=seed)
    return Calibration(model=model.name, pooled=_record(pooled),
                       sites={s: _record(fit, scored[s][1]) for s, fit in sites.items()})


def _record(fit: CalibrationFit, labels: np.ndarray | None = None) -> SiteCalibration:
    binary = labels is not None and fit.out_of_fold.shape[1] == 2
    return SiteCalibration(temperature=fit.temperature, samples=fit.samples, ece=fit.ece,
                           ece_calibrated=fit.ece_calibrated, nll=fit.nll, nll_calibrated=fit.nll_calibrated,
                           scores=fit.out_of_fold[:, 1].round(6).tolist() if binary else None,
                           labels=labels.astype(int).tolist() if binary and labels is not None else None)

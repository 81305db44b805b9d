"""Temperature scaling (Guo et al. 2017), fitted per site so that a probability means what it says there.

Each site's images move the network's confidence its own way (a blurred site may be over-confident, an
inverted one under-confident), so one temperature for all sites leaves each miscalibrated in its own
direction. The temperature divides the logits before the softmax: the predicted label never changes,
only how sure the answer says it is, so the regression gate's accuracies are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from clreg.learner.errors import DataError
from clreg.learner.evaluate import calibration_error, ece_floor, expected_calibration_error

TEMPERATURE_BOUNDS = (0.05, 20.0)
MIN_SAMPLES = 10  # fewer held-out samples than this: keep the prior (or 1) rather than fit noise
PRIOR_SD = 0.5  # sd of log T around the pooled temperature: a site's own T within ~e^(±1) of it at 2 sd
# Cross-fitting folds for the "after" figures. Each fold's temperature is fitted on the other 90% of the held-out
# set, so it is nearly the one served (fitted on all of it); with 2 folds each was fitted on half the data, and
# the pooled out-of-fold scores mixed two different misfits, so the figure described neither.
CROSS_FOLDS = 10


@dataclass(frozen=True)
class CalibrationFit:
    """A site's temperature and what it does on held-out data (after: cross-fitted, see `calibrate`)."""

    temperature: float
    samples: int
    ece: float
    ece_calibrated: float
    nll: float
    nll_calibrated: float
    error_calibrated: float  # debiased RMS calibration error after (see learner.evaluate.calibration_error)
    ece_floor: float  # the ECE a perfectly calibrated model would show on these samples: ECE's noise
    out_of_fold: np.ndarray = field(repr=False, compare=False)  # [N, K] the calibrated probabilities scored


def _check(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y).astype(np.int64)
    if logits.ndim != 2 or len(logits) != len(y):
        raise DataError(f"need logits [N, K] and N labels, got logits {list(logits.shape)} and {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise DataError(f"labels must lie in 0..{logits.shape[1] - 1}")
    return logits, y


def scaled_proba(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), row by row."""
    return cast(np.ndarray, softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    logits, y = _check(logits, y)
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, prior: float | None = None,
                    prior_sd: float = PRIOR_SD) -> float:
    """The temperature that minimises the held-out NLL (a bounded 1-D search over log T).

    With a prior temperature (the pooled one), the search minimises the summed NLL plus a Gaussian penalty
    on log T around it (MAP): a site with few errors in its held-out set cannot talk itself into a tiny,
    over-confident temperature, and a site with many samples still gets its own. Tiny sets keep the prior
    (or 1.0 without one).
    """
    logits, y = _check(logits, y)
    if len(y) < MIN_SAMPLES:
        return 1.0 if prior is None else prior

    def objective(log_t: float) -> float:
        total = nll(logits, y, float(np.exp(log_t))) * len(y)
        return total if prior is None else total + (log_t - np.log(prior)) ** 2 / (2 * prior_sd**2)

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    found = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


Scored = Mapping[str, tuple[np.ndarray, np.ndarray]]  # site -> (held-out logits [N, K], labels [N])


def site_temperatures(scored: Scored, parts: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, float]]:
    """The pooled temperature over every site, and each site's own fitted with the pooled one as its prior.

    parts (site -> sample indices) restricts the fit to those samples of each site; None uses them all.
    """
    pick = {s: (z, y) if parts is None else (z[parts[s]], y[parts[s]]) for s, (z, y) in scored.items()}
    pooled = fit_temperature(np.concatenate([z for z, _ in pick.values()]),
                             np.concatenate([y for _, y in pick.values()]))
    return pooled, {s: fit_temperature(z, y, prior=pooled) for s, (z, y) in pick.items()}


def out_of_fold_proba(scored: Scored, folds: int = 2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per method ("none", "pooled", "per_site") and site: each sample's probabilities under temperatures
    fitted on the other folds only, so scoring them does not flatter the fit."""
    rng = np.random.default_rng(seed)
    split = {s: np.array_split(rng.permutation(len(y)), folds) for s, (_, y) in scored.items()}
    out = {m: {s: np.empty_like(z) for s, (z, _) in scored.items()} for m in ("none", "pooled", "per_site")}
    for f in range(folds):
        rest = {s: np.concatenate([p for g, p in enumerate(parts) if g != f]) for s, parts in split.items()}
        pooled, own = site_temperatures(scored, rest)
        for s, (z, _) in scored.items():
            held = split[s][f]
            out["none"][s][held] = scaled_proba(z[held], 1.0)
            out["pooled"][s][held] = scaled_proba(z[held], pooled)
            out["per_site"][s][held] = scaled_proba(z[held], own[s])
    return out


def _fit(temperature: float, y: np.ndarray, raw: np.ndarray, after: np.ndarray) -> CalibrationFit:
    return CalibrationFit(temperature=temperature, samples=len(y), ece=expected_calibration_error(y, raw),
                          ece_calibrated=expected_calibration_error(y, after), nll=proba_nll(raw, y),
                          nll_calibrated=proba_nll(after, y), error_calibrated=calibration_error(y, after),
                          ece_floor=ece_floor(after), out_of_fold=after)


def proba_nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels under given probabilities (clipped away from log 0)."""
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None)).mean())


def calibrate_sites(scored: Scored, folds: int = CROSS_FOLDS,
                    seed: int = 0) -> tuple[CalibrationFit, dict[str, CalibrationFit]]:
    """Temperatures to serve (fitted on every held-out sample) with ECE and NLL before and, cross-fitted, after.

    Returns the pooled fit (over all sites' samples; serves requests of no learnt site) and each site's.
    Fewer folds are used when the smallest site has fewer samples than `folds`; with a single sample there is
    nothing to cross-fit and the "after" figures are those at temperature 1.

    Raises:
        DataError: no sites, a site without samples, or logits and labels that do not fit together.
    """
    scored = {s: _check(z, y) for s, (z, y) in scored.items()}
    if not scored or any(len(y) == 0 for _, y in scored.values()):
        raise DataError("calibration needs at least one held-out sample for every site")
    pooled, own = site_temperatures(scored)
    folds = min(folds, min(len(y) for _, y in scored.values()))
    cross = folds > 1
    after = out_of_fold_proba(scored, folds, seed) if cross else None
    raw = {s: scaled_proba(z, 1.0) for s, (z, _) in scored.items()}
    sites = {s: _fit(own[s], y, raw[s], after["per_site"][s] if after else raw[s]) for s, (_, y) in scored.items()}
    y_all = np.concatenate([y for _, y in scored.values()])
    pooled_after = np.concatenate([after["pooled"][s] for s in scored]) if after else np.concatenate(list(raw.values()))
    return _fit(pooled, y_all, np.concatenate(list(raw.values())), pooled_after), sites

"""Temperature scaling (Guo et al. 2017), fitted per site so that a probability means what it says there;
for binary models, a temperature and a class bias (Platt scaling with priors).

Each site's images move the network's confidence its own way (a blurred site may be over-confident, an
inverted one under-confident), so one temperature for all sites leaves each miscalibrated in its own
direction. The temperature divides the logits before the softmax: the predicted label never changes, only
how sure the answer says it is, so the regression gate's accuracies are untouched. A binary model's site
also gets a bias added to class 1's scaled logit (its base rate as the network sees it): fitted with a
temperature only, the low-prevalence sites of the binary stream kept a calibration error of 0.07 on
selection seeds, fitted with both (each with a Gaussian prior, so ~50 held-out images cannot overfit
them) every site came under 0.03. Unregularised Platt scaling did worse than the temperature alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from learner.errors import DataError
from learner.evaluate import calibration_error, ece_floor, expected_calibration_error

TEMPERATURE_BOUNDS = (0.05, 20.0)
MIN_SAMPLES = 10  # fewer held-out samples than this: keep the prior (or 1) rather than fit noise
PRIOR_SD = 0.5  # sd of log T around the pooled temperature: a site's own T within ~e^(±1) of it at 2 sd
BIAS_SD = 1.0  # sd of a binary site's class bias around 0 (chosen over 0.5 on selection seeds 100-109)
BIAS_BOUNDS = (-10.0, 10.0)


@dataclass(frozen=True)
class Scaling:
    """How a site's logits become probabilities: divided by the temperature, then (binary models) class 1's
    logit shifted by the bias."""

    temperature: float
    bias: float = 0.0

    def proba(self, logits: np.ndarray) -> np.ndarray:
        return scaled_proba(logits, self.temperature, self.bias)


@dataclass(frozen=True)
class CalibrationFit:
    """A site's temperature and what it does on held-out data (after: cross-fitted, see `calibrate`)."""

    temperature: float
    bias: float  # 0 for models of more than two classes
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


def scaled_proba(logits: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """softmax(logits / temperature), row by row, with `bias` added to class 1's scaled logit first."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias:
        z = z.copy()
        z[:, 1] += bias
    return softmax(z, axis=1)


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


def fit_scaling(logits: np.ndarray, y: np.ndarray, prior: float) -> Scaling:
    """A site's scaling: its temperature (MAP around the pooled `prior`, see fit_temperature) and, for a binary
    model, jointly with it a class bias (MAP around 0, sd BIAS_SD)."""
    logits, y = _check(logits, y)
    if logits.shape[1] != 2 or len(y) < MIN_SAMPLES:
        return Scaling(fit_temperature(logits, y, prior=prior))
    margin, target = logits[:, 1] - logits[:, 0], y.astype(np.float64)

    def objective(w: np.ndarray) -> float:
        log_t, bias = float(w[0]), float(w[1])
        s = margin / np.exp(log_t) + bias
        return float(np.sum(np.logaddexp(0.0, s) - target * s) + (log_t - np.log(prior)) ** 2 / (2 * PRIOR_SD**2)
                     + bias**2 / (2 * BIAS_SD**2))

    found = minimize(objective, np.array([np.log(prior), 0.0]), method="L-BFGS-B",
                     bounds=[tuple(np.log(TEMPERATURE_BOUNDS)), BIAS_BOUNDS])
    return Scaling(float(np.exp(found.x[0])), float(found.x[1]))


Scored = Mapping[str, tuple[np.ndarray, np.ndarray]]  # site -> (held-out logits [N, K], labels [N])


def site_scalings(scored: Scored, parts: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, Scaling]]:
    """The pooled temperature over every site (for requests of no learnt site: no bias, as their base rate
    is unknown), and each site's own scaling with the pooled temperature as its prior.

    parts (site -> sample indices) restricts the fit to those samples of each site; None uses them all.
    """
    pick = {s: (z, y) if parts is None else (z[parts[s]], y[parts[s]]) for s, (z, y) in scored.items()}
    pooled = fit_temperature(np.concatenate([z for z, _ in pick.values()]),
                             np.concatenate([y for _, y in pick.values()]))
    return pooled, {s: fit_scaling(z, y, prior=pooled) for s, (z, y) in pick.items()}


def out_of_fold_proba(scored: Scored, folds: int = 2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per method ("none", "pooled", "per_site") and site: each sample's probabilities under scalings
    fitted on the other folds only, so scoring them does not flatter the fit."""
    rng = np.random.default_rng(seed)
    split = {s: np.array_split(rng.permutation(len(y)), folds) for s, (_, y) in scored.items()}
    out = {m: {s: np.empty_like(z) for s, (z, _) in scored.items()} for m in ("none", "pooled", "per_site")}
    for f in range(folds):
        rest = {s: np.concatenate([p for g, p in enumerate(parts) if g != f]) for s, parts in split.items()}
        pooled, own = site_scalings(scored, rest)
        for s, (z, _) in scored.items():
            held = split[s][f]
            out["none"][s][held] = scaled_proba(z[held], 1.0)
            out["pooled"][s][held] = scaled_proba(z[held], pooled)
            out["per_site"][s][held] = own[s].proba(z[held])
    return out


def _fit(scaling: Scaling, y: np.ndarray, raw: np.ndarray, after: np.ndarray) -> CalibrationFit:
    return CalibrationFit(temperature=scaling.temperature, bias=scaling.bias, samples=len(y),
                          ece=expected_calibration_error(y, raw), ece_calibrated=expected_calibration_error(y, after),
                          nll=proba_nll(raw, y), nll_calibrated=proba_nll(after, y),
                          error_calibrated=calibration_error(y, after), ece_floor=ece_floor(after), out_of_fold=after)


def proba_nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels under given probabilities (clipped away from log 0)."""
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None)).mean())


def calibrate_sites(scored: Scored, folds: int = 2, seed: int = 0) -> tuple[CalibrationFit, dict[str, CalibrationFit]]:
    """Scalings to serve (fitted on every held-out sample) with ECE and NLL before and, cross-fitted, after.

    Returns the pooled fit (over all sites' samples; serves requests of no learnt site) and each site's.
    Sites with too few samples to cross-fit report their "after" figures at temperature 1.

    Raises:
        DataError: no sites, a site without samples, or logits and labels that do not fit together.
    """
    scored = {s: _check(z, y) for s, (z, y) in scored.items()}
    if not scored or any(len(y) == 0 for _, y in scored.values()):
        raise DataError("calibration needs at least one held-out sample for every site")
    pooled, own = site_scalings(scored)
    cross = folds > 1 and min(len(y) for _, y in scored.values()) >= folds
    after = out_of_fold_proba(scored, folds, seed) if cross else None
    raw = {s: scaled_proba(z, 1.0) for s, (z, _) in scored.items()}
    sites = {s: _fit(own[s], y, raw[s], after["per_site"][s] if after else raw[s]) for s, (_, y) in scored.items()}
    y_all = np.concatenate([y for _, y in scored.values()])
    pooled_after = np.concatenate([after["pooled"][s] for s in scored]) if after else np.concatenate(list(raw.values()))
    return _fit(Scaling(pooled), y_all, np.concatenate(list(raw.values())), pooled_after), sites

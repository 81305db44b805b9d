"""Simulated site streams: scikit-learn digits at 16x16 with scanner-like shifts per site.

Shared by the demo, the tests and the benchmarks. Every function is deterministic given its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from clreg.learner.errors import DataError

SITE_NAMES = ("base", "contrast", "blur-noise", "speckle", "inverted")
SIDE = 16


@dataclass
class SiteData:
    """One site's images (float32 [N,1,16,16] in [0,1]) and labels (int64 [N])."""

    name: str
    x: np.ndarray
    y: np.ndarray


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits, bilinearly upsampled from 8x8 to 16x16 and scaled to [0,1]."""
    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return big.clamp(0.0, 1.0).numpy(), bunch.target.astype(np.int64)


def _gamma(x: np.ndarray, rng: np.random.Generator, gamma: float = 0.5) -> np.ndarray:
    return x**gamma


def _contrast(x: np.ndarray, rng: np.random.Generator, gamma: float = 0.5, scale: float = 0.6) -> np.ndarray:
    """A washed-out scanner: gamma brightening, then the range squeezed around the middle."""
    return (x**gamma - 0.5) * scale + 0.5


def _noise(x: np.ndarray, rng: np.random.Generator, sd: float = 0.1) -> np.ndarray:
    return x + rng.normal(0.0, sd, size=x.shape).astype(np.float32)


def _blur(x: np.ndarray, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    return cast(np.ndarray, gaussian_filter(x, sigma=(0, 0, sigma, sigma)))  # blur within each image only


def _blur_noise(x: np.ndarray, rng: np.random.Generator, sigma: float = 1.0, sd: float = 0.1) -> np.ndarray:
    return _noise(_blur(x, rng, sigma), rng, sd)


def _speckle(x: np.ndarray, rng: np.random.Generator, sd: float = 0.5) -> np.ndarray:
    """Multiplicative noise, as in ultrasound speckle."""
    return cast(np.ndarray, x * (1.0 + rng.normal(0.0, sd, size=x.shape).astype(np.float32)))


def _inverted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - x


def _identity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x


SHIFTS: dict[str, Callable[..., np.ndarray]] = {
    "base": _identity,
    "identity": _identity,
    "contrast": _contrast,
    "gamma": _gamma,
    "noise": _noise,
    "blur": _blur,
    "blur-noise": _blur_noise,
    "speckle": _speckle,
    "inverted": _inverted,
}


def shift(x: np.ndarray, kind: str, seed: int, **params: float) -> np.ndarray:
    """Apply the named transform (see SHIFTS) with its params, clipped to [0,1], as float32.

    Raises:
        DataError: the kind is unknown or a parameter does not belong to it.
    """
    fn = SHIFTS.get(kind)
    if fn is None:
        raise DataError(f"unknown shift {kind!r}: choose one of {sorted(SHIFTS)}")
    try:
        out = fn(np.asarray(x, dtype=np.float32), np.random.default_rng(seed), **params)
    except TypeError as e:
        raise DataError(f"bad parameters {params} for shift {kind!r}: {e}") from e
    return cast(np.ndarray, np.clip(out, 0.0, 1.0).astype(np.float32))


def site_shares(n_shares: int, seed: int) -> list[np.ndarray]:
    """Disjoint index shares of the 1797 digits, shuffled by seed: which digits each site gets."""
    if n_shares < 1:
        raise DataError(f"need at least one site, got {n_shares}")
    order = np.random.default_rng(seed).permutation(len(_digits()[1]))
    return np.array_split(order, n_shares)


def digits_sites(seed: int = 0, names: Sequence[str] = SITE_NAMES) -> list[SiteData]:
    """Disjoint shares of the digits, one per site, each through its site's transform (a site name is a shift kind)."""
    x, y = _digits()
    sites = []
    for i, (name, idx) in enumerate(zip(names, site_shares(len(names), seed), strict=True)):
        sites.append(SiteData(name, shift(x[idx], name, seed=seed * 1000 + i), y[idx].copy()))
    return sites


# Sites that combine strong shifts, each a chain of transforms applied in order (the "harsh" stream).
HARSH: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "speckle-inverted": ("speckle", "inverted"),
    "blur-noise-inverted": ("blur-noise", "inverted"),
    "contrast-speckle": ("contrast", "speckle"),
    "gamma-noise-inverted": ("gamma", "noise", "inverted"),
}


def harsh_sites(seed: int) -> list[SiteData]:
    """Disjoint digit shares through chained strong shifts (speckle then inversion, and so on): the sites that
    per-site BatchNorm and EWC alone learn worst."""
    x, y = _digits()
    sites = []
    for i, (name, idx) in enumerate(zip(HARSH, site_shares(len(HARSH), seed), strict=True)):
        images = x[idx]
        for k, kind in enumerate(HARSH[name]):
            images = shift(images, kind, seed=seed * 1000 + i * 10 + k)
        sites.append(SiteData(name, images, y[idx].copy()))
    return sites


def permuted_pixels_stream(n_sites: int, seed: int) -> list[SiteData]:
    """Disjoint digit shares, site k with its own fixed pixel permutation (site 0 unpermuted)."""
    x, y = _digits()
    rng = np.random.default_rng(seed + 7919)  # apart from the share shuffle's stream
    sites = []
    for k, idx in enumerate(site_shares(n_sites, seed)):
        perm = np.arange(SIDE * SIDE) if k == 0 else rng.permutation(SIDE * SIDE)
        flat = x[idx].reshape(len(idx), -1)[:, perm]
        sites.append(SiteData(f"perm-{k}", flat.reshape(-1, 1, SIDE, SIDE).copy(), y[idx].copy()))
    return sites


# The binary stream: "is the digit 5 or more" (about half of the digits), each site at its own prevalence,
# as hospitals see the same finding at different rates (a screening site low, a referral centre high).
BINARY_PREVALENCE: dict[str, float] = {"base": 0.5, "contrast": 0.3, "blur-noise": 0.15, "speckle": 0.4,
                                       "inverted": 0.1}


def binary_sites(seed: int = 0, prevalences: dict[str, float] | None = None) -> list[SiteData]:
    """The digits sites with binary labels (digit >= 5), each subsampled to its prevalence: every sample of the
    scarcer class is kept and the other drawn (seeded) to match, so a site keeps as many images as it can."""
    wanted = BINARY_PREVALENCE if prevalences is None else prevalences
    out = []
    for i, site in enumerate(digits_sites(seed, tuple(wanted))):
        p = wanted[site.name]
        if not 0 < p < 1:
            raise DataError(f"prevalence of {site.name!r} must lie in (0, 1), got {p}")
        y = (site.y >= 5).astype(np.int64)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        total = int(min(len(pos) / p, len(neg) / (1 - p)))
        n_pos = int(round(total * p))
        rng = np.random.default_rng(seed * 1000 + 500 + i)
        keep = np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False),
                                       rng.choice(neg, total - n_pos, replace=False)]))
        out.append(SiteData(site.name, site.x[keep], y[keep]))
    return out


def site_batch(site: SiteData, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of n of the site's images and labels, without replacement."""
    if not 1 <= n <= len(site.y):
        raise DataError(f"site {site.name!r} has {len(site.y)} samples; cannot draw {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(site.y), size=n, replace=False))
    return site.x[idx], site.y[idx]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [0,1] -> uint8 [0,255], rounded, for compact npz payloads."""
    return cast(np.ndarray, np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8))


def _acquisition(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """One site's scanner, drawn at random: rotation, translation, blur, gamma, contrast, a bias field, noise,
    and inversion for one site in five; the images through it, and its parameters."""
    from scipy.ndimage import rotate
    from scipy.ndimage import shift as translate

    p = {"angle": float(rng.uniform(-15, 15)), "dx": float(rng.uniform(-1.5, 1.5)), "dy": float(rng.uniform(-1.5, 1.5)),
         "sigma": float(rng.uniform(0, 1.2)), "gamma": float(rng.uniform(0.6, 1.6)),
         "contrast": float(rng.uniform(0.5, 1.0)), "bias": float(rng.uniform(0, 0.3)),
         "bias_angle": float(rng.uniform(0, 2 * np.pi)), "noise": float(rng.uniform(0, 0.12)),
         "inverted": float(rng.random() < 0.2)}
    out = rotate(x, p["angle"], axes=(2, 3), reshape=False, order=1)
    out = translate(out, (0, 0, p["dy"], p["dx"]), order=1)
    out = gaussian_filter(out, sigma=(0, 0, p["sigma"], p["sigma"]))
    out = (np.clip(out, 0, 1) ** p["gamma"] - 0.5) * p["contrast"] + 0.5
    ramp = np.cos(p["bias_angle"]) * np.linspace(-1, 1, SIDE)[None, :] + \
        np.sin(p["bias_angle"]) * np.linspace(-1, 1, SIDE)[:, None]
    out = out + p["bias"] * ramp[None, None] + rng.normal(0, p["noise"], size=out.shape)
    out = np.clip(out, 0, 1)
    return (1 - out if p["inverted"] else out).astype(np.float32), p


def acquisition_sites(n_sites: int, per_site: int, seed: int) -> list[tuple[SiteData, dict[str, float]]]:
    """Any number of sites (`site-00`, `site-01`, ...), each `per_site` digits drawn at random through its own
    random acquisition shift (_acquisition); sites may share source digits, never within a site."""
    if not 1 <= per_site <= len(_digits()[1]):
        raise DataError(f"a site holds 1 to {len(_digits()[1])} digits, got {per_site}")
    x, y = _digits()
    out = []
    for i in range(n_sites):
        rng = np.random.default_rng([seed, i])
        idx = np.sort(rng.choice(len(y), size=per_site, replace=False))
        images, params = _acquisition(x[idx], rng)
        out.append((SiteData(f"site-{i:02d}", images, y[idx].copy()), params))
    return out

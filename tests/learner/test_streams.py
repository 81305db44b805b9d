"""Site streams: deterministic, disjoint, in range, with the documented transforms."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.learner.errors import DataError
from clreg.learner.streams import (
    BINARY_PREVALENCE,
    SITE_NAMES,
    binary_sites,
    digits_sites,
    permuted_pixels_stream,
    shift,
    site_batch,
    site_shares,
    to_uint8,
)


def test_sites_are_deterministic_and_shaped() -> None:
    a, b = digits_sites(0), digits_sites(0)
    assert [s.name for s in a] == list(SITE_NAMES)
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(s.x, t.x) and np.array_equal(s.y, t.y)
        assert s.x.dtype == np.float32 and s.x.shape[1:] == (1, 16, 16) and s.y.dtype == np.int64
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0
        assert set(s.y.tolist()) == set(range(10))
    assert sum(len(s.y) for s in a) == 1797
    assert not np.array_equal(digits_sites(1)[0].y, a[0].y)


def test_shares_partition_the_digits() -> None:
    shares = site_shares(5, seed=3)
    joined = np.concatenate(shares)
    assert len(joined) == 1797 and np.array_equal(np.sort(joined), np.arange(1797))
    assert [len(s) for s in shares] == [360, 360, 359, 359, 359]


def test_site_transforms_relate_to_base() -> None:
    base_only = digits_sites(0, names=("base", "base", "base", "base", "inverted"))
    plain = digits_sites(0, names=("base",) * 5)
    np.testing.assert_allclose(base_only[4].x, 1.0 - plain[4].x, atol=1e-6)
    assert digits_sites(0)[0].x.tobytes() == plain[0].x.tobytes()


def test_shift_kinds() -> None:
    x = np.linspace(0, 1, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    np.testing.assert_allclose(shift(x, "gamma", 0, gamma=0.5), np.sqrt(x), rtol=1e-6)
    assert np.array_equal(shift(x, "noise", 7, sd=0.03), shift(x, "noise", 7, sd=0.03))
    assert not np.array_equal(shift(x, "noise", 7, sd=0.03), shift(x, "noise", 8, sd=0.03))
    for kind in ("contrast", "blur", "blur-noise", "speckle", "inverted", "base"):
        out = shift(x, kind, 0)
        assert out.dtype == np.float32 and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(DataError, match="unknown shift"):
        shift(x, "rotate", 0)
    with pytest.raises(DataError, match="bad parameters"):
        shift(x, "inverted", 0, sd=1.0)


def test_site_batch_samples_without_replacement() -> None:
    site = digits_sites(0)[1]
    x, y = site_batch(site, 50, seed=4)
    x2, y2 = site_batch(site, 50, seed=4)
    assert x.shape == (50, 1, 16, 16) and np.array_equal(x, x2) and np.array_equal(y, y2)
    with pytest.raises(DataError):
        site_batch(site, len(site.y) + 1, seed=0)


def test_permuted_stream_permutes_pixels() -> None:
    sites = permuted_pixels_stream(3, seed=0)
    base = digits_sites(0, names=("base",) * 3)
    assert [s.name for s in sites] == ["perm-0", "perm-1", "perm-2"]
    assert np.array_equal(sites[0].x, base[0].x)
    flat, ref = sites[2].x.reshape(len(sites[2].y), -1), base[2].x.reshape(len(base[2].y), -1)
    assert np.array_equal(np.sort(flat, axis=1), np.sort(ref, axis=1)) and not np.array_equal(flat, ref)
    assert np.array_equal(permuted_pixels_stream(3, seed=0)[1].x, sites[1].x)


def test_to_uint8_rounds_and_clips() -> None:
    out = to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255, 255, 0]


def test_binary_sites_reach_each_site_prevalence() -> None:
    sites = binary_sites(seed=1)
    assert [s.name for s in sites] == list(BINARY_PREVALENCE)
    for site in sites:
        assert set(np.unique(site.y)) == {0, 1}
        assert abs(site.y.mean() - BINARY_PREVALENCE[site.name]) <= 1 / len(site.y)
        assert len(site.y) >= 150  # the scarcer class is kept whole
    again = binary_sites(seed=1)
    assert all(np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) for a, b in zip(sites, again, strict=True))
    with pytest.raises(DataError, match="prevalence"):
        binary_sites(prevalences={"base": 1.0})

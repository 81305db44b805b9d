"""Image statistics, the PCA reference and its npz round trip."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from clreg.monitor.errors import InvalidInput, InvalidReference
from clreg.monitor.features import (
    IMAGE_STAT_COLUMNS,
    FeatureConfig,
    Reference,
    batch_features,
    fit_reference,
    image_statistics,
)
from tests.monitor.data import embed, images, labels


def test_image_statistics_exact_on_a_two_level_image() -> None:
    # Left half 0, right half 1: 8 zeros and 8 ones, two histogram bins, a Laplacian of +-1 inside.
    x = np.array([[[[0, 0, 1, 1]] * 4]], dtype=np.float32)
    stats = image_statistics(x)
    assert stats.shape == (1, 7)
    np.testing.assert_allclose(stats[0], [0.5, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0])


def test_image_statistics_ramp_constant_and_channel_free_input() -> None:
    ramp = ((np.arange(32) + 0.5) / 32).reshape(1, 1, 4, 8)  # one value per histogram bin
    constant = np.full((1, 1, 4, 8), 0.3)
    stats = image_statistics(np.concatenate([ramp, constant]))
    assert stats[0, IMAGE_STAT_COLUMNS.index("img_entropy")] == pytest.approx(5.0)
    np.testing.assert_allclose(stats[1], [0.3, 0.0, 0.3, 0.3, 0.3, 0.0, 0.0], atol=1e-12)
    # [N, H, W] is one channel.
    np.testing.assert_array_equal(image_statistics(ramp[:, 0]), stats[:1])


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((1, 1, 2, 8)), np.full((1, 1, 4, 4), np.nan)])
def test_image_statistics_refuses_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInput):
        image_statistics(bad)


def test_fit_reference_splits_fit_and_table_rows() -> None:
    rng = np.random.default_rng(0)
    x, y = images(rng, 100), labels(rng, 100)
    ref = fit_reference(embed, x, y, FeatureConfig(pca_components=4))
    cols = [f"emb_{i}" for i in range(4)] + list(IMAGE_STAT_COLUMNS) + ["label"]
    assert list(ref.features.columns) == cols
    assert len(ref.features) == 50  # the other 50 only fitted the PCA
    assert ref.pca_mean.shape == (64,) and ref.pca_components.shape == (4, 64)
    np.testing.assert_allclose(ref.pca_components @ ref.pca_components.T, np.eye(4), atol=1e-10)
    assert ref.features["label"].dtype == np.int64
    # The table rows are a subset of the images: their statistics match some image's exactly.
    all_stats = image_statistics(x)
    first = ref.features[list(IMAGE_STAT_COLUMNS)].to_numpy()[0]
    assert np.isclose(all_stats, first).all(axis=1).sum() == 1


def test_pca_components_are_capped_by_rank_and_match_batch_features() -> None:
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 64))

    def rank3(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, :3] @ basis

    x = images(rng, 40)
    ref = fit_reference(rank3, x, labels(rng, 40), FeatureConfig(pca_components=16, pca_fit_share=0.0))
    assert ref.pca_components.shape == (3, 64)
    assert len(ref.features) == 40
    again = batch_features(rank3, ref, x, labels(rng, 40))
    pd.testing.assert_frame_equal(again.drop(columns="label"), ref.features.drop(columns="label"))
    assert list(batch_features(rank3, ref, x, None).columns) == ref.feature_columns


def test_reference_round_trips_through_npz_without_pickle() -> None:
    rng = np.random.default_rng(2)
    ref = fit_reference(embed, images(rng, 60), labels(rng, 60), FeatureConfig(pca_components=5))
    buffer = io.BytesIO()
    np.savez(buffer, **ref.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        back = Reference.from_arrays(dict(npz))
    np.testing.assert_array_equal(back.pca_mean, ref.pca_mean)
    np.testing.assert_array_equal(back.pca_components, ref.pca_components)
    pd.testing.assert_frame_equal(back.features, ref.features)


def test_from_arrays_names_what_is_wrong() -> None:
    rng = np.random.default_rng(3)
    arrays = fit_reference(embed, images(rng, 20), labels(rng, 20), FeatureConfig(pca_components=2)).to_arrays()
    with pytest.raises(InvalidReference, match="lack"):
        Reference.from_arrays({k: v for k, v in arrays.items() if k != "labels"})
    with pytest.raises(InvalidReference, match="do not match"):
        Reference.from_arrays({**arrays, "labels": arrays["labels"][:-1]})
    with pytest.raises(InvalidReference, match="PCA shapes"):
        Reference.from_arrays({**arrays, "pca_mean": arrays["pca_mean"][:-1]})


def test_bad_labels_and_embeddings_are_refused() -> None:
    rng = np.random.default_rng(4)
    x = images(rng, 10)
    ref = fit_reference(embed, x, labels(rng, 10), FeatureConfig(pca_components=2))
    with pytest.raises(InvalidInput, match="labels"):
        fit_reference(embed, x, np.zeros(10, dtype=np.float32), FeatureConfig())
    with pytest.raises(InvalidInput, match="embed returned"):
        batch_features(lambda a: a.reshape(-1), ref, x, None)
    with pytest.raises(InvalidInput, match="width"):
        batch_features(lambda a: a.reshape(len(a), -1)[:, :10], ref, x, None)
    with pytest.raises(InvalidInput, match="too few"):
        fit_reference(embed, x[:3], labels(rng, 3), FeatureConfig())

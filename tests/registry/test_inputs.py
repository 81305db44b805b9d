"""The capped log of prediction inputs on a real Redis: raw float32 bytes in, the same arrays out."""

from __future__ import annotations

import numpy as np
import pytest

from clreg.registry.connection import connect
from clreg.registry.inputs import CheckedEstimate, InputLog, InputLogConfig
from clreg.registry.store import RedisRegistry, StoreConfig

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def log(store_cfg: StoreConfig, **cfg: float) -> InputLog:
    return InputLog(store_cfg, InputLogConfig(**cfg))


def test_recent_gives_back_the_exact_images_oldest_first(registry: RedisRegistry, store_cfg: StoreConfig) -> None:
    inputs = log(store_cfg)
    x = np.random.default_rng(0).random((5, 1, 4, 3), dtype=np.float32)
    assert inputs.record("cnn", x[:3], version=1) == 3
    assert inputs.record("cnn", x[3:], version=2) == 2
    np.testing.assert_array_equal(inputs.recent("cnn", 10), x)
    np.testing.assert_array_equal(inputs.recent("cnn", 2), x[3:])
    assert inputs.recent("other", 10).shape[0] == 0
    # Raw bytes, not pickle: the entry is the image's float32 buffer and its shape.
    fields = connect(store_cfg, decode_responses=False).xrange("clreg-test:inputs:cnn", count=1)[0][1]
    assert fields == {b"x": x[0].tobytes(), b"shape": b"1,4,3", b"version": b"1", b"site": b""}


def test_recent_of_a_site_and_its_checked_estimate(registry: RedisRegistry, store_cfg: StoreConfig) -> None:
    inputs = log(store_cfg)
    x = np.random.default_rng(1).random((6, 1, 2, 2), dtype=np.float32)
    inputs.write({"cnn": [(x[:2], 1, "a"), (x[2:3], 1, None), (x[3:], 1, "b")]},
                 {("cnn", "a"): [0.9], ("cnn", "b"): [0.8]})
    np.testing.assert_array_equal(inputs.recent("cnn", 10, site="a"), x[:2])
    np.testing.assert_array_equal(inputs.recent("cnn", 2, site="b"), x[4:])
    np.testing.assert_array_equal(inputs.recent("cnn", 10), x)
    assert inputs.recent("cnn", 10, site="c").shape[0] == 0 and inputs.sites("cnn") == ["a", "b"]
    figures = CheckedEstimate(estimate=0.61, stable=0.7, answers=4, version=3, at=5.0)
    inputs.set_checked("cnn", "b", figures)
    assert inputs.checked("cnn") == {"b": figures} and inputs.checked("other") == {}


def test_the_stream_is_capped(store_cfg: StoreConfig, registry: RedisRegistry) -> None:
    inputs = log(store_cfg, cap=10)
    for i in range(30):
        inputs.record("cnn", np.full((4, 1, 2, 2), i, dtype=np.float32))
    kept = inputs.count("cnn")
    assert 10 <= kept < 120  # approximate MAXLEN trims whole nodes: at least the cap, never everything
    assert inputs.recent("cnn", 1)[0, 0, 0, 0] == 29.0


def test_only_the_newest_shape_is_read_back(store_cfg: StoreConfig, registry: RedisRegistry) -> None:
    inputs = log(store_cfg)
    inputs.record("cnn", np.zeros((2, 1, 2, 2), dtype=np.float32))
    inputs.record("cnn", np.ones((3, 1, 3, 3), dtype=np.float32))
    assert inputs.recent("cnn", 10).shape == (3, 1, 3, 3)


def test_sampling_respects_rate_and_per_request_limit(store_cfg: StoreConfig) -> None:
    x = np.zeros((100, 1, 2, 2), dtype=np.float32)
    assert len(log(store_cfg).sample(x)) == 32
    assert len(log(store_cfg, max_per_request=500).sample(x)) == 100
    assert len(log(store_cfg, sample_rate=0.0).sample(x)) == 0
    assert len(InputLog(store_cfg, InputLogConfig(enabled=False)).sample(x)) == 0
    assert 5 <= len(log(store_cfg, sample_rate=0.2, max_per_request=500).sample(x)) <= 40


def test_a_window_is_seen_once(store_cfg: StoreConfig, registry: RedisRegistry) -> None:
    inputs = log(store_cfg)
    x = np.ones((3, 1, 2, 2), dtype=np.float32)
    window = inputs.window_id(x)
    assert len(window) == 64 and window != inputs.window_id(x * 2)
    assert inputs.seen("cnn", window) is False
    assert inputs.seen("cnn", window) is True
    assert inputs.seen("cnn", inputs.window_id(x * 2)) is False


def test_bad_names_and_shapes_are_refused(store_cfg: StoreConfig) -> None:
    with pytest.raises(ValueError):
        log(store_cfg).record("Bad Name", np.zeros((1, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        log(store_cfg).record("cnn", np.zeros((2, 2), dtype=np.float32))

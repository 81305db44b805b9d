"""The replica's recorder: requests add to memory, one pipeline per interval writes it all, and what is read
back is what was answered (images with their version, each site's confidences, the newest `cap` kept)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.store import RedisRegistry
from clreg.serving.recorder import Recorder


class Counting(redis.Redis):
    """A client that counts its round trips: pipelines executed and commands sent on their own."""

    trips = 0

    def execute_command(self, *args: object, **options: object) -> object:
        Counting.trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: object = None) -> redis.client.Pipeline:
        Counting.trips += 1
        return super().pipeline(transaction, shard_hint)


def test_requests_are_written_together_and_read_back_as_answered(registry: RedisRegistry) -> None:
    inputs = InputLog(registry.cfg, InputLogConfig(cap=50))
    recorder = Recorder(inputs, interval_s=3600)  # flushed by hand below
    rng = np.random.default_rng(0)
    sent = [rng.random((2, 1, 4, 4)).astype(np.float32) for _ in range(40)]
    for i, x in enumerate(sent):
        recorder.add("m", x, version=1 + i // 20, site="a" if i % 2 else None, correct=np.array([0.9, 0.6]))
    assert inputs.count("m") == 0 and inputs.estimates("m") == {}  # nothing written on a request's path
    recorder.flush()
    kept = inputs.recent("m", 100)
    assert len(kept) == 50  # 80 images answered, the newest 50 kept
    np.testing.assert_array_equal(kept, np.concatenate(sent)[-50:])
    assert inputs.estimates("m") == {"a": (pytest.approx(0.75), 40)}
    recorder.close()


def test_one_flush_is_one_round_trip_whatever_the_traffic(registry: RedisRegistry) -> None:
    inputs = InputLog(registry.cfg, InputLogConfig(cap=1000), client=Counting.from_url(registry.cfg.url))
    recorder = Recorder(inputs, interval_s=3600)
    for _ in range(300):
        recorder.add("m", np.zeros((1, 1, 4, 4), np.float32), version=1, site="a", correct=np.array([0.8]))
    Counting.trips = 0
    recorder.flush()
    assert Counting.trips == 1
    assert inputs.count("m") == 300 and inputs.estimates("m") == {"a": (pytest.approx(0.8), 300)}
    recorder.close()

"""Rehearsal: the reservoir keeps a bounded, deterministic sample; a replayed minibatch is scored exactly as
its site is served; replaying an earlier site keeps it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clreg.learner import tensorfile
from clreg.learner.errors import WeightsError
from clreg.learner.evaluate import predict_logits, site_metrics
from clreg.learner.ewc import EWCState
from clreg.learner.models import load_weights, small_cnn
from clreg.learner.replay import (
    FORMAT,
    Memory,
    Rehearsal,
    memory_from_bytes,
    memory_to_bytes,
    site_from_bytes,
    site_logits,
    site_to_bytes,
)
from clreg.learner.sitebn import bank_from_bytes, site_model
from clreg.learner.streams import digits_sites
from clreg.learner.train import TrainConfig, train_site


def _fill(seed: int) -> Memory:
    memory = Memory()
    rng = np.random.default_rng(0)
    for _ in range(4):
        memory.add("a", rng.random((25, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, 25), capacity=10, seed=seed)
    return memory


def test_the_reservoir_is_bounded_deterministic_and_round_trips() -> None:
    memory = _fill(seed=1)
    site = memory.sites["a"]
    assert site.x.shape == (10, 1, 4, 4) and site.x.dtype == np.uint8 and site.seen == 100
    again = _fill(seed=1)
    assert (again.sites["a"].x == site.x).all() and (again.sites["a"].y == site.y).all()
    assert not (_fill(seed=2).sites["a"].x == site.x).all()  # another seed, another sample
    back = memory_from_bytes(memory_to_bytes(memory))
    assert (back.sites["a"].x == site.x).all() and back.sites["a"].seen == 100
    x, _ = back.arrays("a")
    assert x.dtype == np.uint8 and x is back.sites["a"].x  # as stored: float32 only where it is used


def test_a_uint8_batch_stays_uint8_at_a_quarter_of_the_bytes() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 1, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    memory = Memory()
    memory.add("a", images, labels, capacity=100, seed=0)
    back = memory_from_bytes(memory_to_bytes(memory))
    assert back.sites["a"].x.dtype == np.uint8 and np.array_equal(back.sites["a"].x, images)
    as_float32 = tensorfile.dump({"0.x": torch.from_numpy(images.astype(np.float32) / 255.0),
                                  "0.y": torch.from_numpy(labels)}, FORMAT, {"sites": ["a"], "seen": [40]})
    ratio = len(memory_to_bytes(memory)) / len(as_float32)
    assert 0.25 <= ratio < 0.27, ratio  # images dominate; the labels and the header add a little
    float_batch = Memory()  # the registry's float32 (uint8 / 255) quantises back to the same bytes
    float_batch.add("a", images.astype(np.float32) / 255.0, labels, capacity=100, seed=0)
    assert memory_to_bytes(float_batch) == memory_to_bytes(memory)


def test_a_reservoir_with_references_stores_where_its_samples_lie_and_reads_them_back_exactly() -> None:
    rng = np.random.default_rng(3)
    batches = {f"b{i}": rng.integers(0, 256, (30, 1, 32, 32), dtype=np.uint8) for i in range(3)}
    labels = {b: rng.integers(0, 2, 30) for b in batches}
    memory = Memory()
    for b, x in batches.items():
        memory.add("a", x, labels[b], capacity=40, seed=0, refs=[(b, i) for i in range(30)])
    site = memory.sites["a"]
    assert site.refs is not None and len(site.refs) == 40 and site.seen == 90
    assert all(np.array_equal(site.x[k], batches[b][r]) and site.y[k] == labels[b][r]
               for k, (b, r) in enumerate(site.refs))  # each slot's reference names the sample it holds
    read: list[str] = []
    stored = site_to_bytes(site)
    back = site_from_bytes(stored, lambda b: read.append(b) or batches[b].astype(np.float32) / 255.0)
    assert np.array_equal(back.x, site.x) and back.x.dtype == np.uint8 and np.array_equal(back.y, site.y)
    assert back.refs == site.refs and back.seen == 90 and sorted(read) == sorted({b for b, _ in site.refs})
    assert len(stored) < 512 + 20 * 40 < site.x.nbytes / 30  # a source, a row and a label a sample: no images
    with pytest.raises(WeightsError, match="with its batches' images"):
        site_from_bytes(stored)
    with pytest.raises(WeightsError, match="row 29 of batch b"):
        site_from_bytes(stored, lambda b: batches[b][:5])


def test_a_reservoir_holding_a_sample_without_a_reference_stores_images() -> None:
    rng = np.random.default_rng(4)
    memory = Memory()
    memory.add("a", rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8), np.zeros(5, np.int64), 10, 0,
               refs=[("b0", i) for i in range(5)])
    memory.add("a", rng.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8), np.ones(3, np.int64), 10, 0)
    site = memory.sites["a"]
    assert site.refs is None and len(site.y) == 8
    back = site_from_bytes(site_to_bytes(site))  # no images needed: they are in the bytes
    assert np.array_equal(back.x, site.x) and np.array_equal(back.y, site.y)


def test_training_on_uint8_images_equals_training_on_their_float32() -> None:
    base, inverted = digits_sites(seed=5, names=("base", "inverted"))
    as_uint8 = lambda x: np.rint(x * 255).astype(np.uint8)  # noqa: E731
    memory = Memory()
    memory.add("base", as_uint8(base.x[:64]), base.y[:64], capacity=64, seed=0)
    cfg = TrainConfig(epochs=1, fisher_samples=16)
    torch.manual_seed(0)
    start = small_cnn(1, 16, 16, 10)
    first = train_site(copy.deepcopy(start), base.x[:64], base.y[:64], "base", EWCState(), cfg)
    results = []
    for x, replay in ((as_uint8(inverted.x[:64]), memory.arrays("base")),
                      (as_uint8(inverted.x[:64]).astype(np.float32) / 255.0,
                       (memory.arrays("base")[0].astype(np.float32) / 255.0, memory.arrays("base")[1]))):
        results.append(train_site(copy.deepcopy(start), x, inverted.y[:64], "inverted", EWCState(), cfg,
                                  bn_bank=first.bn_bank, replay={"base": replay}))
    assert results[0].weights == results[1].weights and results[0].bn_bank == results[1].bn_bank


def test_a_replayed_minibatch_is_scored_as_its_site_is_served() -> None:
    base, inverted = digits_sites(seed=3, names=("base", "inverted"))
    cfg = TrainConfig(epochs=1, fisher_samples=32)
    torch.manual_seed(0)
    model = small_cnn(1, 16, 16, 10)
    first = train_site(model, base.x[:64], base.y[:64], "base", EWCState(), cfg)
    second = train_site(model, inverted.x[:64], inverted.y[:64], "inverted", EWCState(), cfg, bn_bank=first.bn_bank)
    bank = bank_from_bytes(second.bn_bank)
    net = small_cnn(1, 16, 16, 10)
    load_weights(net, second.weights)
    x = torch.from_numpy(base.x[:16])
    served = predict_logits(site_model(net, bank, "base"), base.x[:16])
    with torch.no_grad():
        replayed = site_logits(net, bank["base"], x).double().numpy()
    assert np.allclose(served, replayed, atol=1e-5)


def test_replaying_an_earlier_site_keeps_it() -> None:
    base, inverted = digits_sites(seed=4, names=("base", "inverted"))
    cfg = TrainConfig(epochs=6, ewc_lambda=0.0, fisher_samples=32)
    torch.manual_seed(0)
    start = small_cnn(1, 16, 16, 10)
    first = train_site(start, base.x[:300], base.y[:300], "base", EWCState(), cfg)
    memory = Memory()
    memory.add("base", base.x[:300], base.y[:300], capacity=200, seed=0)
    scores = {}
    for replay in (False, True):
        net = copy.deepcopy(start)
        result = train_site(net, inverted.x[:300], inverted.y[:300], "inverted", EWCState(), cfg,
                            bn_bank=first.bn_bank, replay={"base": memory.arrays("base")} if replay else None)
        load_weights(net, result.weights)
        bank = bank_from_bytes(result.bn_bank)
        scores[replay] = site_metrics(net, base.x[300:], base.y[300:], site_bn=bank["base"]).accuracy
    assert scores[True] > scores[False] + 0.1, scores


def test_sites_take_turns_under_a_per_step_budget_and_each_is_replayed_equally_often() -> None:
    data = {s: (torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)) for s in "abcde"}
    rehearsal = Rehearsal(data, None, 2, torch.Generator().manual_seed(0), sites_per_step=2)
    steps = [[site for site, _, _ in rehearsal.draw()] for _ in range(25)]
    assert all(len(step) == 2 and len(set(step)) == 2 for step in steps)  # two distinct sites a step
    counts = {s: sum(step.count(s) for step in steps) for s in "abcde"}
    assert set(counts.values()) == {10}  # 50 draws over 5 sites: 10 each
    again = Rehearsal(data, None, 2, torch.Generator().manual_seed(0), sites_per_step=2)
    assert [[s for s, _, _ in again.draw()] for _ in range(25)] == steps  # seeded
    every = Rehearsal(data, None, 2, torch.Generator().manual_seed(0))
    assert [s for s, _, _ in every.draw()] == list("abcde")  # no budget: every site, every step

"""A version's EWC state and replay memory in parts: exact round trips, parts shared with the parent stored once,
an anchor that is the weights not stored, and the whole artifacts of versions from before parts still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clreg import parts
from clreg.learner.ewc import EWCState, consolidate, state_from_bytes, state_to_bytes, trainable_params
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.learner.replay import Memory, memory_to_bytes
from clreg.registry.artifacts import ArtifactStore


class Counting(ArtifactStore):
    """An artifact store that counts the bytes of blobs it did not hold yet."""

    written = 0

    def put(self, data: bytes) -> str:
        from clreg.registry.artifacts import sha256

        if not self.exists(sha256(data)):
            self.written += len(data)
        return super().put(data)


def _state(model: torch.nn.Module, sites: list[str], seed: int) -> EWCState:
    """Entries for `sites`, the last anchored at the model's own parameters, the others elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    params = trainable_params(model)
    state = EWCState()
    for i, site in enumerate(sites):
        anchor = params if i == len(sites) - 1 else {k: torch.rand(p.shape, generator=gen) for k, p in params.items()}
        state = consolidate(state, site, {k: torch.rand(p.shape, generator=gen) for k, p in params.items()}, anchor)
    return state


def _equal(a: EWCState, b: EWCState) -> bool:
    return (a.mode, a.gamma, a.sites, list(a.entries)) == (b.mode, b.gamma, b.sites, list(b.entries)) and all(
        torch.equal(a.entries[k].fisher[n], b.entries[k].fisher[n]) and
        torch.equal(a.entries[k].anchor[n], b.entries[k].anchor[n]) for k in a.entries for n in a.entries[k].fisher)


def test_an_ewc_state_round_trips_and_an_anchor_at_the_weights_is_not_stored(tmp_path: Path) -> None:
    store = Counting(str(tmp_path))
    model = small_cnn(1, 16, 16, 4)
    state = _state(model, ["a", "b"], seed=0)
    weights = weights_to_bytes(model)
    digests = parts.put_ewc(store, state_to_bytes(state), weights, store.put(weights))
    assert sorted(digests) == ["ewc", "ewc/a/anchor", "ewc/a/fisher", "ewc/b/anchor", "ewc/b/fisher", "weights"]
    assert digests["ewc/b/anchor"] == digests["weights"] != digests["ewc/a/anchor"]
    back = parts.get_ewc(store, digests)
    assert back is not None and _equal(state_from_bytes(back), state)


def test_a_version_stores_only_the_parts_it_changed(tmp_path: Path) -> None:
    store = Counting(str(tmp_path))
    model = small_cnn(1, 16, 16, 4)
    params = trainable_params(model)
    first = _state(model, ["a", "b"], seed=0)
    weights = weights_to_bytes(model)
    parent = parts.put_ewc(store, state_to_bytes(first), weights, store.put(weights))
    with torch.no_grad():  # the next version: new weights, site c consolidated at them, a and b unchanged
        for p in model.parameters():
            p.add_(0.01)
    second = consolidate(first, "c", {k: torch.ones_like(p) for k, p in params.items()}, trainable_params(model))
    weights = weights_to_bytes(model)
    before = store.written
    digests = parts.put_ewc(store, state_to_bytes(second), weights, store.put(weights), parent)
    assert digests["ewc/b/anchor"] == parent["weights"] and digests["ewc/c/anchor"] == digests["weights"]
    fisher_bytes = len(store.get(digests["ewc/c/fisher"]))
    new = store.written - before
    assert new < len(weights) + fisher_bytes + 1024  # the weights, c's Fisher and a small index: nothing of a, b
    back = parts.get_ewc(store, digests)
    assert back is not None and _equal(state_from_bytes(back), second)


def test_replay_memory_round_trips_and_an_unchanged_site_is_stored_once(tmp_path: Path) -> None:
    store = Counting(str(tmp_path))
    rng = np.random.default_rng(0)
    memory = Memory()
    for site in ("a", "b"):
        memory.add(site, rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 20), 10, 0)
    digests = parts.put_replay(store, memory)
    back = parts.get_replay(store, digests)
    assert sorted(back.sites) == ["a", "b"] and all(
        np.array_equal(back.sites[s].x, memory.sites[s].x) and np.array_equal(back.sites[s].y, memory.sites[s].y)
        and back.sites[s].seen == memory.sites[s].seen for s in memory.sites)
    memory.add("b", rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 5), 10, 0)
    before = store.written
    again = parts.put_replay(store, memory)
    assert again["replay/a"] == digests["replay/a"] and again["replay/b"] != digests["replay/b"]
    assert store.written - before < len(store.get(again["replay/b"])) + 1024
    assert parts.put_replay(store, Memory()) == {}


def test_whole_artifacts_of_versions_from_before_parts_still_read(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    model = small_cnn(1, 16, 16, 4)
    state = _state(model, ["a"], seed=1)
    memory = Memory()
    memory.add("a", np.zeros((3, 1, 8, 8), np.uint8), np.array([0, 1, 2]), 10, 0)
    old = {"ewc": store.put(state_to_bytes(state)), "replay": store.put(memory_to_bytes(memory))}
    back = parts.get_ewc(store, old)
    assert back is not None and _equal(state_from_bytes(back), state)
    assert parts.get_replay(store, old).sites["a"].seen == 3
    assert parts.get_ewc(store, {}) is None and not parts.get_replay(store, {}).sites

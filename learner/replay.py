"""Rehearsal: a bounded reservoir of each site's training samples, replayed through that site's BatchNorm.

A registry that keeps every site's batches has what plain EWC lacks: the data. Each site whose data
policy allows it keeps a reservoir (Algorithm R, seeded, so the same stream gives the same memory) of at
most `capacity` training samples, never held-out ones; an update mixes minibatches drawn from it into the
new site's. Under per-site BatchNorm a replayed minibatch goes through its own site's BatchNorm (running
statistics and scale/shift held fixed), so only the shared weights learn from it.
In memory the images are uint8 as they came, float32 ones quantised to 1/255 (exact for the registry's float32,
which is uint8 / 255): a quarter of float32's bytes, on the device and in Ray's object store; a replayed
minibatch is made float32 only when it is drawn (learner.images). Stored, a site's reservoir is references:
where each kept sample already lies (a batch id and its row there) and its label, so a version whose reservoir
changed stores a few kilobytes rather than the images again (`site_to_bytes`); a reservoir whose samples
came without references stores its images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.learner import tensorfile
from clreg.learner.errors import WeightsError
from clreg.learner.images import as_float
from clreg.learner.sitebn import BN, SiteBN

FORMAT = "clreg-replay/1"
Ref = tuple[str, int]  # where a sample is stored: its batch's id and its row there
Images = Callable[[str], np.ndarray]  # a batch's images [N, C, H, W] by its id: what references are read from


@dataclass
class SiteMemory:
    """Up to `capacity` of a site's training samples, and how many it has seen (the reservoir's count)."""

    x: np.ndarray  # uint8 [N, C, H, W]
    y: np.ndarray  # int64 [N]
    seen: int
    refs: list[Ref] | None = None  # where each kept sample is stored; None when some came without one


@dataclass
class Memory:
    """Every replayable site's reservoir."""

    sites: dict[str, SiteMemory] = field(default_factory=dict)

    def add(self, site: str, x: np.ndarray, y: np.ndarray, capacity: int, seed: int,
            refs: Sequence[Ref] | None = None) -> None:
        """Offer a site's new training samples (uint8, or float32 in [0, 1]) to its reservoir; `refs` says where
        each is stored (the reservoir is stored as references while every sample it keeps has one)."""
        old = self.sites.get(site)
        images = _as_uint8(x)
        keep_x = list(old.x) if old else []
        keep_y = list(old.y) if old else []
        keep_refs: list[Ref | None] = list(old.refs or cast("list[Ref | None]", [None] * len(old.y))) if old else []
        offered: Sequence[Ref | None] = refs if refs is not None else [None] * len(y)
        seen = old.seen if old else 0
        rng = np.random.default_rng([seed, seen, len(y)])  # deterministic for the same stream of batches
        for image, label, ref in zip(images, np.asarray(y, np.int64), offered, strict=True):
            if len(keep_y) < capacity:
                keep_x.append(image)
                keep_y.append(label)
                keep_refs.append(ref)
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < capacity:
                    keep_x[slot], keep_y[slot], keep_refs[slot] = image, label, ref
            seen += 1
        known = [r for r in keep_refs if r is not None]
        self.sites[site] = SiteMemory(np.stack(keep_x), np.asarray(keep_y, np.int64), seen,
                                      known if len(known) == len(keep_refs) else None)

    def arrays(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        """A site's remembered samples as stored, uint8 [N, C, H, W], and int64 labels: learner.models.to_tensor
        (or learner.images.as_float) makes them float32 in [0, 1] where they are used."""
        mem = self.sites[site]
        return mem.x, mem.y


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 images as they are; float ones in [0, 1] rounded to the nearest 1/255."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, np.float32) * 255), 0, 255).astype(np.uint8)


def memory_to_bytes(memory: Memory) -> bytes:
    """Deterministic safetensors bytes of every reservoir: images as uint8, labels as int64."""
    sites = sorted(memory.sites)
    tensors: dict[str, Tensor] = {}
    for i, site in enumerate(sites):
        tensors[f"{i}.x"] = torch.from_numpy(memory.sites[site].x)
        tensors[f"{i}.y"] = torch.from_numpy(memory.sites[site].y)
    return tensorfile.dump(tensors, FORMAT, {"sites": sites, "seen": [memory.sites[s].seen for s in sites]})


def memory_from_bytes(data: bytes) -> Memory:
    """Inverse of memory_to_bytes (WeightsError for bytes it did not write)."""
    tensors, info = tensorfile.load(data, FORMAT, "replay memory")
    return Memory({site: SiteMemory(tensors[f"{i}.x"].numpy(), tensors[f"{i}.y"].numpy(), int(seen))
                   for i, (site, seen) in enumerate(zip(info["sites"], info["seen"], strict=True))})


# A memory stored in parts (clreg.parts): one artifact per site, so a site's unchanged reservoir is stored once.
SITE_FORMAT = "clreg-replay-site/1"  # the images themselves
REFS_FORMAT = "clreg-replay-refs/1"  # where the images are stored, and the labels
INDEX_FORMAT = "clreg-replay-index/1"


def is_index(data: bytes) -> bool:
    """Whether replay bytes are an index of per-site parts rather than a whole memory (memory_to_bytes)."""
    return tensorfile.format_of(data) == INDEX_FORMAT


def index_to_bytes(memory: Memory) -> bytes:
    return tensorfile.dump({}, INDEX_FORMAT, {"sites": sorted(memory.sites)})


def index_from_bytes(data: bytes) -> list[str]:
    """The sites an index names (WeightsError for bytes index_to_bytes did not write)."""
    return list(tensorfile.load(data, INDEX_FORMAT, "replay index")[1]["sites"])


def site_to_bytes(memory: SiteMemory) -> bytes:
    """A site's reservoir as references where every sample has one, else as its images."""
    if memory.refs is None:
        return tensorfile.dump({"x": torch.from_numpy(memory.x), "y": torch.from_numpy(memory.y)}, SITE_FORMAT,
                               {"seen": memory.seen})
    sources = sorted({batch for batch, _ in memory.refs})
    number = {batch: i for i, batch in enumerate(sources)}
    return tensorfile.dump({"source": torch.tensor([number[b] for b, _ in memory.refs], dtype=torch.int32),
                            "row": torch.tensor([row for _, row in memory.refs], dtype=torch.int64),
                            "y": torch.from_numpy(memory.y)}, REFS_FORMAT, {"seen": memory.seen, "sources": sources})


def site_from_bytes(data: bytes, images: Images | None = None) -> SiteMemory:
    """Inverse of site_to_bytes; references are read through `images` (WeightsError without it, or for a row
    its batch does not have)."""
    if tensorfile.format_of(data) != REFS_FORMAT:
        tensors, info = tensorfile.load(data, SITE_FORMAT, "replay site")
        return SiteMemory(tensors["x"].numpy(), tensors["y"].numpy(), int(info["seen"]))
    tensors, info = tensorfile.load(data, REFS_FORMAT, "replay site")
    if images is None:
        raise WeightsError("a replay memory stored by reference is read with its batches' images")
    source, row = tensors["source"].numpy(), tensors["row"].numpy()
    x: np.ndarray | None = None
    for i, batch in enumerate(info["sources"]):
        mine = np.flatnonzero(source == i)
        stored = images(batch)
        if int(row[mine].max()) >= len(stored):
            raise WeightsError(f"replay memory names row {int(row[mine].max())} of batch {batch}, which has "
                               f"{len(stored)}")
        if x is None:
            x = np.empty((len(row), *stored.shape[1:]), np.uint8)
        x[mine] = _as_uint8(stored[row[mine]])
    assert x is not None  # a stored reservoir holds at least one sample
    refs = [(info["sources"][s], int(r)) for s, r in zip(source, row, strict=True)]
    return SiteMemory(x, tensors["y"].numpy(), int(info["seen"]), refs)


@contextlib.contextmanager
def fixed_norms(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode for the block: normalise with the running statistics, update none."""
    layers = [m for m in model.modules() if isinstance(m, BN)]
    modes = [m.training for m in layers]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


def site_logits(model: nn.Module, site_bn: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """The model's logits for x with a site's BatchNorm (constants) over the model's own shared weights, whose
    gradients flow as usual."""
    device = x.device
    overrides = {k: v.to(device) for k, v in site_bn.items()}
    with fixed_norms(model):
        return cast(Tensor, torch.func.functional_call(model, overrides, (x,), strict=False))


class Rehearsal:
    """Replayed minibatches: every step draws one from each of `sites_per_step` remembered sites (all of them
    when None), so the remembered sites weigh in the update as the new one does while a step's cost stays
    bounded however many sites there are. With fewer sites per step than sites, the sites take turns in
    shuffled rounds: each is replayed equally often."""

    def __init__(self, data: Mapping[str, tuple[Tensor, Tensor]], bank: Mapping[str, SiteBN] | None,
                 batch_size: int, gen: torch.Generator, sites_per_step: int | None = None) -> None:
        self.sites = [s for s, (x, _) in data.items() if len(x) >= 2]
        self.data = data
        self.bank = bank
        self.batch_size = batch_size
        self.gen = gen
        self.per_step = len(self.sites) if sites_per_step is None else min(sites_per_step, len(self.sites))
        self._round: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.sites)

    def _turn(self) -> list[str]:
        """The sites replayed at this step."""
        if self.per_step >= len(self.sites):
            return self.sites
        chosen: list[str] = []
        while len(chosen) < self.per_step:
            if not self._round:  # a new round: every site once, in a fresh order
                self._round = [self.sites[i] for i in torch.randperm(len(self.sites), generator=self.gen).tolist()]
            site = self._round.pop()
            if site in chosen:  # met again across a round's end: it waits for the next step
                self._round.insert(0, site)
                continue
            chosen.append(site)
        return chosen

    def draw(self) -> list[tuple[str, Tensor, Tensor]]:
        """One minibatch from each site whose turn it is."""
        out = []
        for site in self._turn():
            x, y = self.data[site]
            idx = torch.randperm(len(x), generator=self.gen)[: self.batch_size]
            out.append((site, as_float(x[idx]), y[idx]))  # float32 for this minibatch only
        return out

    def loss(self, model: nn.Module) -> Tensor:
        """Mean cross-entropy over the remembered sites, each minibatch through its own site's BatchNorm."""
        losses = [F.cross_entropy(self.logits(model, site, x), y) for site, x, y in self.draw()]
        return torch.stack(losses).mean()

    def logits(self, model: nn.Module, site: str, x: Tensor) -> Tensor:
        """Per-site BatchNorm when there is a bank; the model's own otherwise."""
        return site_logits(model, self.bank[site], x) if self.bank else model(x)

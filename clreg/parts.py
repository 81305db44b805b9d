"""A version's EWC state and replay memory stored in parts, so what it shares with its parent is stored once.

The EWC state of every earlier site and the rehearsal memory of every replayable site would otherwise be
written whole with each version: at fifty sites, fifty Fisher diagonals and anchors per version. Stored in
parts, each entry's Fisher, each anchor and each site's reservoir is its own content-addressed artifact
(unchanged ones hash to the digest already stored), and an anchor that is exactly the version's weights is
not stored at all. A reservoir is stored as references to the batches its samples came from (learner.replay),
so a changed one costs kilobytes, not its images. The version's artifact map names every part
(`ewc/<site>/fisher`, `ewc/<site>/anchor`, `replay/<site>`; an anchor may name a weights artifact), so
retention sees what each version uses; `ewc` and `replay` hold small indexes. Versions written before parts
keep their whole `ewc` and `replay` artifacts, which read as before.
"""

from __future__ import annotations

from safetensors.torch import load as st_load

from clreg.learner import ewc, replay
from clreg.learner.ewc import EWCEntry
from clreg.learner.replay import Memory
from clreg.registry.artifacts import Artifact, ArtifactStore

Digests = dict[str, str]  # artifact name -> sha256, as in ModelVersion.artifacts


def put_ewc(store: ArtifactStore, state_bytes: bytes, weights: bytes, weights_digest: str,
            parent: Digests | None = None) -> Digests:
    """Store an EWC state (state_to_bytes) in parts; the artifact names and digests for the version.

    An anchor equal to `weights` is the weights artifact itself; an entry whose Fisher is the parent's part
    (the entry was not consolidated again: consolidation replaces Fisher and anchor together) keeps the
    parent's anchor artifact, which may be an earlier version's weights.
    """
    state = ewc.state_from_bytes(state_bytes)
    tensors = st_load(weights)
    parent = parent or {}
    out: Digests = {Artifact.WEIGHTS.value: weights_digest}
    for key, entry in state.entries.items():
        fisher, anchor = f"ewc/{key}/fisher", f"ewc/{key}/anchor"
        out[fisher] = store.put(ewc.part_to_bytes(entry.fisher))
        if ewc.anchored_in(entry, tensors):
            out[anchor] = weights_digest
        elif parent.get(fisher) == out[fisher] and anchor in parent:
            out[anchor] = parent[anchor]
        else:
            out[anchor] = store.put(ewc.part_to_bytes(entry.anchor))
    out[Artifact.EWC.value] = store.put(ewc.index_to_bytes(state))
    return out


def get_ewc(store: ArtifactStore, artifacts: Digests) -> bytes | None:
    """The version's EWC state as state_to_bytes writes it (whole, as a training task takes it); None without one."""
    digest = artifacts.get(Artifact.EWC.value)
    if digest is None:
        return None
    data = store.get(digest)
    if not ewc.is_index(data):  # a version from before parts: its state whole
        return data
    state, keys = ewc.index_from_bytes(data)
    for key in keys:
        fisher = ewc.part_from_bytes(store.get(artifacts[f"ewc/{key}/fisher"]))
        anchor_blob = store.get(artifacts[f"ewc/{key}/anchor"])
        anchor = ewc.part_from_bytes(anchor_blob) if ewc.is_part(anchor_blob) else \
            ewc.part_from_bytes(anchor_blob, names=fisher)
        state.entries[key] = EWCEntry(fisher, anchor)
    return ewc.state_to_bytes(state)


def put_replay(store: ArtifactStore, memory: Memory) -> Digests:
    """Store a replay memory, one artifact per site; the artifact names and digests ({} for an empty one)."""
    if not memory.sites:
        return {}
    out = {f"replay/{site}": store.put(replay.site_to_bytes(m)) for site, m in memory.sites.items()}
    return {**out, Artifact.REPLAY.value: store.put(replay.index_to_bytes(memory))}


def get_replay(store: ArtifactStore, artifacts: Digests, images: replay.Images | None = None) -> Memory:
    """The version's replay memory (empty where it has none); a site stored by reference reads its samples'
    images through `images` (Stores.images)."""
    digest = artifacts.get(Artifact.REPLAY.value)
    if digest is None:
        return Memory()
    data = store.get(digest)
    if not replay.is_index(data):  # a version from before parts
        return replay.memory_from_bytes(data)
    return Memory({site: replay.site_from_bytes(store.get(artifacts[f"replay/{site}"]), images)
                   for site in replay.index_from_bytes(data)})

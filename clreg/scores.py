"""A version's answers on every held-out set it learnt, computed once and kept with the version.

Calibration needs the logits of every learnt site's held-out set when a version is assembled, and the gate needs
the same answers of the candidate and of production. So they are computed once, when the version is assembled,
and stored as its `scores` artifact: per site, the logits as /v1/predict computes them (the site's own
BatchNorm, or the one MAP routing picks for a site the version never learnt), the labels, and the digest of the
held-out set they answer (the site's learnt batches). The gate then reads production's scores instead of running
production again; a site whose held-out set has grown since (a new batch of it) does not match its digest and
is answered anew, as is everything of a version stored before scores.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from clreg.context import Stores
from clreg.learner.answer import Answerer
from clreg.learner.evaluate import predict_logits
from clreg.learner.models import to_tensor
from clreg.registry.artifacts import Artifact, VersionArtifacts
from clreg.registry.records import Model, ModelVersion


@dataclass(frozen=True)
class SiteScores:
    """One site's held-out set answered by one version: logits [N, K] (float64), labels [N], the set's digest."""

    heldout: str
    logits: np.ndarray
    labels: np.ndarray

    @property
    def proba(self) -> np.ndarray:
        """Class probabilities [N, K], as learner.evaluate.predict_proba gives them."""
        return softmax(self.logits, axis=1) if self.logits.size else self.logits


Scores = dict[str, SiteScores]


def heldout_digest(batch_ids: list[str]) -> str:
    """Names a held-out set: the batches it is the held-out part of (their order does not matter)."""
    return hashlib.sha256("\n".join(sorted(batch_ids)).encode()).hexdigest()


def batches_by_site(stores: Stores, batch_ids: list[str]) -> dict[str, list[str]]:
    """The batch ids of each site, in the given order."""
    out: dict[str, list[str]] = {}
    for batch_id in batch_ids:
        out.setdefault(stores.registry.batches.get(batch_id).site, []).append(batch_id)
    return out


def answer(stores: Stores, model: Model, answerer: Answerer, by_site: dict[str, list[str]]) -> Scores:
    """Each site's held-out set (of its batches in `by_site`) answered as a /v1/predict request naming the site."""
    sets = heldout_sets(stores, model, by_site)
    logits = {site: predict_logits(answerer.pick(site, to_tensor(x))[0], x) for site, (x, _) in sets.items()}
    return from_logits(by_site, sets, logits)


def heldout_sets(stores: Stores, model: Model, by_site: dict[str, list[str]]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's held-out images and labels, of its batches in `by_site`."""
    out = {}
    for site, ids in by_site.items():
        [out[site]] = stores.split_by_site(model, ids, "heldout").values()
    return out


def from_logits(by_site: dict[str, list[str]], sets: dict[str, tuple[np.ndarray, np.ndarray]],
                logits: dict[str, np.ndarray]) -> Scores:
    """Scores of the held-out sets from their logits (computed here, or in a Ray task where training runs)."""
    return {site: SiteScores(heldout_digest(by_site[site]), logits[site], y.astype(np.int64))
            for site, (_, y) in sets.items()}


def to_bytes(scores: Scores) -> bytes:
    """npz (no pickle): per site i, `logits_i`, `labels_i`; the sites and digests as string arrays."""
    sites = sorted(scores)
    arrays: dict[str, np.ndarray] = {"sites": np.array(sites, dtype=str),
                                     "heldout": np.array([scores[s].heldout for s in sites], dtype=str)}
    for i, site in enumerate(sites):
        arrays[f"logits_{i}"], arrays[f"labels_{i}"] = scores[site].logits, scores[site].labels
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def from_bytes(data: bytes) -> Scores:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {str(site): SiteScores(str(digest), npz[f"logits_{i}"], npz[f"labels_{i}"])
                for i, (site, digest) in enumerate(zip(npz["sites"], npz["heldout"], strict=True))}


def of_version(stores: Stores, model: Model, version: ModelVersion, by_site: dict[str, list[str]]) -> Scores:
    """The version's scores on these held-out sets: its stored ones where the set is the one they answer,
    the rest answered now."""
    stored = VersionArtifacts(stores.artifacts, version).optional(Artifact.SCORES)
    kept = from_bytes(stored) if stored is not None else {}
    out = {s: kept[s] for s, ids in by_site.items() if s in kept and kept[s].heldout == heldout_digest(ids)}
    missing = {s: ids for s, ids in by_site.items() if s not in out}
    if missing:
        out |= answer(stores, model, stores.answerer(model, version), missing)
    return out

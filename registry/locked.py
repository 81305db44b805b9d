"""Locked test sets: batches a site pushed with `?locked=true`, never learnt, scored for every version.

    {p}:model:{m}:locked            hash  batch id -> site: the model's locked batches
    {p}:model:{m}:locked:scores     hash  "{version}:{site}:{digest}" -> LockedScore JSON

A locked batch is stored like any other (content-addressed, counted), but its record has `locked: true`, no
training indices (every sample is in `heldout_index`), and the daemon never adds it to the pending set: no update
trains on it, replays it, chooses a candidate or fits a temperature with it (clreg/locking.py). A site's locked set
is all its locked batches; its digest names them (the sha256 of their sorted ids, as a held-out set's is) and is
fixed in the model's protocol. Each version is scored on each site's locked set by the daemon: the figures are a
SiteCalibration computed on the locked samples at the temperature the version serves there, so readiness judges them
with the model's rules exactly as it judges held-out figures, and `overlay` puts them in place of the held-out ones.
"""

from __future__ import annotations

import hashlib

from pydantic import Field

from clreg.registry.connection import translated
from clreg.registry.findings import Calibration, SiteCalibration
from clreg.registry.records import BatchId, Digest, Name, Record, check_name, now, parse
from clreg.registry.store import RedisRegistry


def set_digest(batch_ids: list[str]) -> str:
    """Names a locked set by the batches in it (their order does not matter), as clreg.scores names held-out sets."""
    return hashlib.sha256("\n".join(sorted(batch_ids)).encode()).hexdigest()


class LockedScore(Record):
    """One version on one site's locked set: the figures readiness and the evidence pack report for that site."""

    model: Name
    version: int = Field(ge=1)
    site: Name
    digest: Digest  # set_digest(batch_ids)
    batch_ids: list[BatchId]
    learnt: bool  # whether the version learnt the site (else: MAP-routed BatchNorm, pooled temperature)
    figures: SiteCalibration
    at: float = Field(default_factory=now)


class LockedSets:
    """The locked sets of one model, and every version's scores on them."""

    def __init__(self, registry: RedisRegistry, model: str) -> None:
        self._reg = registry
        self.model = check_name(model)
        self._members = registry.key("model", self.model, "locked")
        self._scores = registry.key("model", self.model, "locked", "scores")

    @translated
    def add(self, batch_id: str, site: str) -> None:
        self._reg.r.hset(self._members, batch_id, check_name(site))

    @translated
    def sites(self) -> dict[str, list[str]]:
        """Site -> its locked batch ids, sorted."""
        out: dict[str, list[str]] = {}
        for batch_id, site in self._reg.r.hgetall(self._members).items():
            out.setdefault(site, []).append(batch_id)
        return {site: sorted(ids) for site, ids in sorted(out.items())}

    def digests(self) -> dict[str, str]:
        """Site -> the digest of its locked set as it is now."""
        return {site: set_digest(ids) for site, ids in self.sites().items()}

    @translated
    def put(self, score: LockedScore) -> None:
        self._reg.r.hset(self._scores, f"{score.version}:{score.site}:{score.digest}", score.model_dump_json())

    @translated
    def has(self, version: int, site: str, digest: str) -> bool:
        return bool(self._reg.r.hexists(self._scores, f"{int(version)}:{site}:{digest}"))

    @translated
    def scores(self, version: int | None = None) -> dict[tuple[int, str], LockedScore]:
        """(version, site) -> its score on the site's locked set as it is now (older sets' scores left out)."""
        current = self.digests()
        out = {}
        for field, raw in self._reg.r.hgetall(self._scores).items():
            number, site, digest = field.split(":")
            if current.get(site) == digest and version in (None, int(number)):
                out[(int(number), site)] = parse(LockedScore, raw)
        return dict(sorted(out.items()))

    def of_version(self, version: int) -> dict[str, LockedScore]:
        """Site -> the version's score on that site's current locked set."""
        return {site: score for (_, site), score in self.scores(version).items()}

    def overlay(self, calibration: Calibration | None, version: int) -> Calibration | None:
        """The version's calibration with each locked site's figures in place of its held-out ones (readiness then
        judges a site by its locked set, and a site the version never learnt but was scored on is judged too)."""
        locked = self.of_version(version)
        if not locked or calibration is None:
            return calibration
        sites: dict[str, SiteCalibration] = {**calibration.sites, **{s: v.figures for s, v in locked.items()}}
        return calibration.model_copy(update={"sites": sites})


def overlaid(registry: RedisRegistry, calibration: Calibration | None, model: str,
             version: int | None) -> Calibration | None:
    """`LockedSets.overlay` for callers holding a version number, or None (no production yet)."""
    return calibration if version is None else LockedSets(registry, model).overlay(calibration, version)

"""Shadow runs: a candidate that passed its gate, mirrored on a share of live traffic before it may be promoted.

    {p}:model:{m}:shadow         JSON  ShadowRun while a candidate is mirrored; its start and end bump the
                                       serving generation, so replicas (which watch it) load or drop it
    {p}:model:{m}:v:{n}:shadow   hash  "{site}:{counter}" -> what the candidate did on mirrored requests
                                       (counters: requests, samples, agreed, confidence_sum; site "*": none named)

Replicas add to the counters (HINCRBY, so every replica's share adds up); the daemon reads them for its verdict.
"""

from __future__ import annotations

from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.connection import Command, Write, translated
from clreg.registry.errors import Conflict
from clreg.registry.records import Name, Record, ShadowPolicy, VersionView, check_name, now, parse
from clreg.registry.store import RedisRegistry

NO_SITE = "*"  # the site field of requests that name no site and were not routed to one
_COUNTERS = ("requests", "samples", "agreed", "confidence_sum")


class ShadowRun(Record):
    model: Name
    version: int = Field(ge=1)
    policy: ShadowPolicy
    started_at: float = Field(default_factory=now)


class ShadowCounts(BaseModel):
    """What a candidate did beside production on mirrored requests (of one site, or all of them)."""

    model_config = ConfigDict(frozen=True)
    requests: int = 0
    samples: int = 0
    agreed: int = 0  # samples the candidate labelled (or decided, at the site's threshold) as production did
    confidence_sum: float = 0.0  # the candidate's calibrated top probability, summed over samples

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.samples if self.samples else None

    @property
    def confidence(self) -> float | None:
        return self.confidence_sum / self.samples if self.samples else None

    def __add__(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(requests=self.requests + other.requests, samples=self.samples + other.samples,
                            agreed=self.agreed + other.agreed,
                            confidence_sum=self.confidence_sum + other.confidence_sum)


class ShadowFigures(BaseModel):
    """A version's shadow figures, in total and per site."""

    model_config = ConfigDict(frozen=True)
    total: ShadowCounts
    sites: dict[str, ShadowCounts] = Field(default_factory=dict)

    @classmethod
    def of(cls, sites: dict[str, ShadowCounts]) -> ShadowFigures:
        return cls(total=sum(sites.values(), ShadowCounts()), sites=sites)

    def summary(self) -> dict[str, Any]:
        """As the API and `clreg versions` show them: agreement and mean confidence, in total and per site."""
        def line(c: ShadowCounts) -> dict[str, Any]:
            return {"requests": c.requests, "samples": c.samples,
                    "agreement": None if c.agreement is None else round(c.agreement, 4),
                    "confidence": None if c.confidence is None else round(c.confidence, 4)}
        return {**line(self.total), "sites": {site: line(c) for site, c in sorted(self.sites.items())}}


class Shadows:
    def __init__(self, registry: RedisRegistry) -> None:
        self._reg = registry

    def _run_key(self, model: str) -> str:
        return self._reg.key("model", check_name(model), "shadow")

    def _counts_key(self, model: str, version: int) -> str:
        return self._reg.key("model", check_name(model), "v", int(version), "shadow")

    @translated
    def start(self, run: ShadowRun) -> bool:
        """Mirror `run.version`; False (and nothing written) when that version is already mirrored.
        Conflict while another version of the model is."""
        key, generation = self._run_key(run.model), self._reg.key("serving", "generation")
        started: list[bool] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raw = pipe.get(key)
            if raw is not None:
                current = parse(ShadowRun, raw)
                if current.version != run.version:
                    raise Conflict(f"version {current.version} of {run.model} is mirrored already")
                started[:] = [False]
                return []
            pipe.multi()
            pipe.set(key, run.model_dump_json())
            started[:] = [True]
            return [Command("INCR", generation)]  # on a cluster right after EXEC (see RedisRegistry.promote)

        self._reg.writer.transaction(txn, key)
        return started[0]

    @translated
    def end(self, model: str, version: int) -> None:
        """Stop mirroring `version` (nothing when another version, or none, is mirrored)."""
        key = self._run_key(model)

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            raw = pipe.get(key)
            if raw is None or parse(ShadowRun, raw).version != version:
                return []
            pipe.multi()
            pipe.delete(key)
            return [Command("INCR", self._reg.key("serving", "generation"))]

        self._reg.writer.transaction(txn, key)

    @translated
    def active(self, model: str) -> ShadowRun | None:
        raw = self._reg.r.get(self._run_key(model))
        return None if raw is None else parse(ShadowRun, raw)

    @translated
    def active_all(self, models: list[str]) -> dict[str, ShadowRun]:
        """Every mirrored candidate among `models`, in one pipelined round trip (what replicas read)."""
        pipe = self._reg.r.pipeline(transaction=False)
        for model in models:
            pipe.get(self._run_key(model))
        return {m: parse(ShadowRun, raw) for m, raw in zip(models, pipe.execute(), strict=True) if raw is not None}

    @translated
    def record(self, counts: dict[tuple[str, int, str], ShadowCounts]) -> None:
        """Add replicas' counts ((model, version, site) -> counts) in one round trip."""
        pipe = self._reg.r.pipeline(transaction=False)
        for (model, version, site), c in counts.items():
            key, field = self._counts_key(model, version), site if site == NO_SITE else check_name(site)
            pipe.hincrby(key, f"{field}:requests", c.requests)
            pipe.hincrby(key, f"{field}:samples", c.samples)
            pipe.hincrby(key, f"{field}:agreed", c.agreed)
            pipe.hincrbyfloat(key, f"{field}:confidence_sum", c.confidence_sum)
        pipe.execute()

    @translated
    def figures(self, model: str, versions: list[int]) -> dict[int, ShadowFigures]:
        """The shadow figures of those of `versions` that were ever mirrored, in one round trip."""
        pipe = self._reg.r.pipeline(transaction=False)
        for number in versions:
            pipe.hgetall(self._counts_key(model, number))
        return {n: _figures(raw) for n, raw in zip(versions, pipe.execute(), strict=True) if raw}

    def attach(self, model: str, views: list[VersionView]) -> list[VersionView]:
        """The views with the shadow figures (their summary, and "active": mirrored now) of every version that
        was mirrored on live traffic, in two round trips."""
        figures, run = self.figures(model, [v.version.number for v in views]), self.active(model)
        if run is not None:  # mirrored, perhaps without a request yet
            figures.setdefault(run.version, ShadowFigures.of({}))
        mirrored = run.version if run is not None else None
        return [v.model_copy(update={"shadow": {**figures[n].summary(), "active": n == mirrored}})
                if (n := v.version.number) in figures else v for v in views]


def _figures(raw: dict[str, str]) -> ShadowFigures:
    sites: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        site, _, counter = field.rpartition(":")
        if counter in _COUNTERS:
            sites.setdefault(site, {})[counter] = float(value)
    return ShadowFigures.of({site: ShadowCounts(requests=int(c.get("requests", 0)), samples=int(c.get("samples", 0)),
                                                agreed=int(c.get("agreed", 0)),
                                                confidence_sum=c.get("confidence_sum", 0.0))
                             for site, c in sites.items()})

"""Which versions the live Serve replicas answer with: "promoted" says the alias moved, "served" that every
live replica has swapped to it.

    {p}:serving:replicas   hash   replica id -> ReplicaBeat JSON (the version of each model it serves, when)

Each replica beats every `beat_interval_s` from its poll loop; a replica whose last beat is older than three
intervals is not live (stopped, killed, or cut off from Redis) and is dropped from the hash by the next reader.
"""

from __future__ import annotations

import math

from pydantic import Field

from clreg.registry.connection import translated
from clreg.registry.records import Record, now, parse
from clreg.registry.store import RedisRegistry


class ReplicaBeat(Record):
    replica: str = Field(min_length=1, max_length=200)
    served: dict[str, int]  # model -> the version this replica answers with
    on_demand: bool = False  # loads a model at its first request (the production version then): Serve multiplexing
    at: float = Field(default_factory=now)


class Replicas:
    def __init__(self, registry: RedisRegistry, beat_interval_s: float = 1.0) -> None:
        self._reg = registry
        self._key = registry.key("serving", "replicas")
        self.max_age_s = 3 * beat_interval_s

    @translated
    def beat(self, replica: str, served: dict[str, int], on_demand: bool = False) -> None:
        pipe = self._reg.r.pipeline(transaction=False)
        beat = ReplicaBeat(replica=replica, served=served, on_demand=on_demand)
        pipe.hset(self._key, replica, beat.model_dump_json())
        pipe.expire(self._key, math.ceil(2 * self.max_age_s))  # gone with the last replica, like a heartbeat
        pipe.execute()

    @translated
    def forget(self, replica: str) -> None:
        """A replica shutting down leaves the live list at once."""
        self._reg.r.hdel(self._key, replica)

    @translated
    def live(self) -> list[ReplicaBeat]:
        """The replicas that beat within the last three intervals; older beats are removed."""
        beats = [parse(ReplicaBeat, raw) for raw in self._reg.r.hvals(self._key)]
        oldest = now() - self.max_age_s
        stale = [b.replica for b in beats if b.at < oldest]
        if stale:
            self._reg.r.hdel(self._key, *stale)
        return sorted((b for b in beats if b.at >= oldest), key=lambda b: b.replica)

    def serving(self, model: str, version: int) -> tuple[int, int]:
        """(live replicas answering `model` with `version`, live replicas). A replica loading models on demand
        that does not hold `model` counts as answering with it: its next request loads the production version."""
        live = self.live()

        def answers(beat: ReplicaBeat) -> bool:
            held = beat.served.get(model)
            return held == version or (beat.on_demand and held is None)
        return sum(answers(b) for b in live), len(live)

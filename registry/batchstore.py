"""Batches and the pending sets: what sites pushed, each batch's state, and what waits for the next update.

Keys (under the registry's prefix): see registry/store.py (batch:{id}, batch:{id}:state, batches:active,
model:{m}:batches, model:{m}:site:{s}:counts, model:{m}:pending, site:{s}:usage).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from clreg.registry.connection import Durability, StreamEntry, translated
from clreg.registry.errors import NotFound
from clreg.registry.records import (
    FINAL_BATCH,
    Batch,
    BatchState,
    BatchStatus,
    SiteCounts,
    SiteUsage,
    check_batch_id,
    check_name,
    now,
    parse,
)


class Batches:
    """The batches part of the registry (RedisRegistry.batches)."""

    def __init__(self, r: redis.Redis, key: Callable[..., str], durability: Durability) -> None:
        self.r = r
        self._key = key
        self._durability = durability

    @translated
    def add(self, batch: Batch, entries: Sequence[StreamEntry] = (), stored_bytes: int = 0) -> bool:
        """Store a batch record with its state, counts, its site's usage and `entries` (its event, its ingest
        entry) in one transaction, on disk before it returns; False if the same batch was stored before."""
        key = self._key("batch", batch.id)
        added: list[bool] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            if pipe.exists(key):
                added[:] = [False]
                return
            state = BatchState(status=BatchStatus.RECEIVED)
            pipe.multi()
            pipe.set(key, batch.model_dump_json())
            pipe.set(self._key("batch", batch.id, "state"), state.model_dump_json())
            pipe.zadd(self._key("batches", "active"), {batch.id: state.updated_at})
            pipe.zadd(self._key("model", batch.model, "batches"), {batch.id: batch.created_at})
            counts = self._key("model", batch.model, "site", batch.site, "counts")
            pipe.hincrby(counts, "batches", 1)
            pipe.hincrby(counts, "samples", batch.samples)
            for k, n in enumerate(batch.class_counts):
                pipe.hincrby(counts, str(k), n)
            usage = self._key("site", batch.site, "usage")
            pipe.hincrby(usage, "bytes", stored_bytes)
            pipe.hincrby(usage, _day(batch.created_at), 1)
            for entry in entries:
                entry.add_to(pipe)
            added[:] = [True]

        self.r.transaction(txn, key)
        if added[0]:
            self._durability.wait()
        return added[0]

    @translated
    def site_usage(self, site: str) -> SiteUsage:
        raw = self.r.hmget(self._key("site", check_name(site), "usage"), ["bytes", _day(now())])
        return SiteUsage(bytes=int(raw[0] or 0), batches_today=int(raw[1] or 0))

    @translated
    def site_counts(self, model: str, sites: list[str]) -> dict[str, SiteCounts]:
        """Per site: batches, samples and labels pushed for `model` (counted at ingest, duplicates excluded)."""
        pipe = self.r.pipeline(transaction=False)
        for site in sites:
            pipe.hgetall(self._key("model", check_name(model), "site", check_name(site), "counts"))
        return {site: SiteCounts.from_hash(raw) for site, raw in zip(sites, pipe.execute(), strict=True) if raw}

    @translated
    def get(self, batch_id: str) -> Batch:
        raw = self.r.get(self._key("batch", check_batch_id(batch_id)))
        if raw is None:
            raise NotFound(f"batch {batch_id} does not exist")
        return parse(Batch, raw)

    @translated
    def state(self, batch_id: str) -> BatchState:
        raw = self.r.get(self._key("batch", check_batch_id(batch_id), "state"))
        if raw is None:
            raise NotFound(f"batch {batch_id} does not exist")
        return parse(BatchState, raw)

    @translated
    def set_state(self, batch_id: str, state: BatchState) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._key("batch", check_batch_id(batch_id), "state"), state.model_dump_json())
        if state.status in FINAL_BATCH:
            pipe.zrem(self._key("batches", "active"), batch_id)
        else:
            pipe.zadd(self._key("batches", "active"), {batch_id: state.updated_at})
        pipe.execute()

    @translated
    def active(self, unchanged_for_s: float = 0.0) -> list[tuple[str, BatchState]]:
        """Batches not yet promoted, rejected or failed whose state has not changed for `unchanged_for_s`."""
        ids = self.r.zrangebyscore(self._key("batches", "active"), "-inf", now() - unchanged_for_s)
        raws = self.r.mget([self._key("batch", i, "state") for i in ids]) if ids else []
        return [(i, parse(BatchState, raw)) for i, raw in zip(ids, raws, strict=True) if raw is not None]

    @translated
    def of_model(self, model: str) -> list[Batch]:
        ids = self.r.zrange(self._key("model", check_name(model), "batches"), 0, -1)
        raws = self.r.mget([self._key("batch", i) for i in ids]) if ids else []
        return [parse(Batch, raw) for raw in raws if raw is not None]

    @translated
    def add_pending(self, model: str, batch_id: str) -> None:
        self.r.sadd(self._key("model", model, "pending"), batch_id)

    @translated
    def pending(self, model: str) -> list[str]:
        return sorted(self.r.smembers(self._key("model", model, "pending")))

    @translated
    def clear_pending(self, model: str, batch_ids: list[str]) -> None:
        if batch_ids:
            self.r.srem(self._key("model", model, "pending"), *batch_ids)


def _day(at: float) -> str:
    """The UTC day of a time, as a usage hash field ("day:YYYY-MM-DD")."""
    return "day:" + time.strftime("%Y-%m-%d", time.gmtime(at))

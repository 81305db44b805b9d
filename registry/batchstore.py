"""Batches and the pending sets: what sites pushed, each batch's state, and what waits for the next update.

Keys (under the registry's prefix): see registry/store.py (batch:{id}, batch:{id}:state, batches:active,
model:{m}:batches, model:{m}:site:{s}:counts, model:{m}:pending, site:{s}:usage).

A batch's keys span slots on a Redis Cluster, so there `add` is three acknowledged steps instead of one
transaction (see `_add_sharded`), ordered so that a push retried after a writer died half-way finishes the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis
from redis.crc import key_slot

from clreg.registry.connection import Command, StreamEntry, Write, translated
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
from clreg.registry.writes import Writer

# A cluster ingest's first step, in the model's slot and exactly once per batch (the batch joining the model's
# listing decides): the site's counts and the stream entries of that slot (the batch.received event).
# KEYS: the model's batches zset, the site's counts hash, then each stream. ARGV: batch id, created_at, the
# number of count fields, (field, increment) pairs, then per stream its MAXLEN ('' for none), its number of
# fields and (field, value) pairs.
_ADMIT = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 3, #KEYS do
  local cmd = {'XADD', KEYS[k]}
  if ARGV[i] ~= '' then cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[i] end
  cmd[#cmd + 1] = '*'
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, 2 * n do
    cmd[#cmd + 1] = ARGV[i]
    i = i + 1
  end
  redis.call(unpack(cmd))
end
return 1
"""


class Batches:
    """The batches part of the registry (RedisRegistry.batches)."""

    def __init__(self, r: redis.Redis, key: Callable[..., str], writer: Writer) -> None:
        self.r = r
        self._key = key
        self._writer = writer
        self._admit = r.register_script(_ADMIT)

    @translated
    def add(self, batch: Batch, entries: Sequence[StreamEntry] = (), stored_bytes: int = 0) -> bool:
        """Store a batch record with its state, counts, its site's usage and `entries` (its event, its ingest
        entry) in one transaction, acknowledged (replicas, disk) before it returns; False if the same batch was
        stored before."""
        if self._writer.cluster:
            return self._add_sharded(batch, entries, stored_bytes)
        key = self._key("batch", batch.id)
        added: list[bool] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            added[:] = [not pipe.exists(key)]
            if not added[0]:
                return []
            state = BatchState(status=BatchStatus.RECEIVED)
            pipe.multi()
            pipe.set(key, batch.model_dump_json())
            pipe.set(self._key("batch", batch.id, "state"), state.model_dump_json())
            return [*self._indexes(batch, state, nx=False), *self._counts(batch), *self._usage(batch, stored_bytes),
                    *entries]

        self._writer.transaction(txn, key, acknowledge=True)
        return added[0]

    def _add_sharded(self, batch: Batch, entries: Sequence[StreamEntry], stored_bytes: int) -> bool:
        """`add` on a cluster. First, in the model's slot and exactly once: the batch joins the model's listing,
        its site's counts and its events. Then, each safe to repeat, its ingest entry, index and state; last its
        record, which is what a later push of the same bytes finds (ingest's duplicate check). A push retried after
        a writer died between the steps finds no record and finishes the batch; it may enqueue it twice (the
        daemon skips a batch it has checked) and the site's usage counts it only if the first step did."""
        listing = self._key("model", batch.model, "batches")
        local = [e for e in entries if _same_slot(e.key, listing)]
        counts = [(c.key, c.args) for c in self._counts(batch)]
        args: list[str | int | float] = [batch.id, batch.created_at, len(counts)]
        for _, (field, increment) in counts:
            args += [field, increment]
        for entry in local:
            args += ["" if entry.maxlen is None else entry.maxlen, len(entry.fields)]
            args += [part for item in entry.fields.items() for part in item]
        keys = [listing, self._key("model", batch.model, "site", batch.site, "counts"), *(e.key for e in local)]
        new = bool(self._writer.script(self._admit, keys, args, acknowledge=True))
        record = self._key("batch", batch.id)
        if not new and self.r.exists(record):
            return False
        rest = [e for e in entries if e not in local]
        state = BatchState(status=BatchStatus.RECEIVED)
        self._writer.apply([*rest, *self._indexes(batch, state, nx=True),
                            *(self._usage(batch, stored_bytes) if new else ())], acknowledge=True)
        self._writer.apply([Command("SET", record, (batch.model_dump_json(), "NX"))], acknowledge=True)
        return new

    @translated
    def settle(self, batch: Batch) -> None:
        """Acknowledge a batch found stored (a duplicate push) as `add` acknowledges a new one: the first push may
        have failed its WAIT, and its record may not be on a replica yet. WAIT waits for what its own connection
        wrote, so this writes something after the record (a count of duplicate pushes) and waits for that. On a
        cluster, where a batch's keys lie on several primaries, a duplicate is answered without waiting."""
        if not self._writer.cluster:
            self._writer.apply([Command("HINCRBY", self._key("site", batch.site, "usage"), ("duplicates", 1))],
                               acknowledge=True)

    def _indexes(self, batch: Batch, state: BatchState, nx: bool) -> list[Command]:
        """The new batch's state, its place among the active batches and (on one Redis) in its model's listing."""
        state_key, active = self._key("batch", batch.id, "state"), self._key("batches", "active")
        if nx:  # a retried push must not undo what the daemon did with the batch since
            return [Command("SET", state_key, (state.model_dump_json(), "NX")),
                    Command("ZADD", active, ("NX", state.updated_at, batch.id))]
        return [Command("ZADD", active, (state.updated_at, batch.id)),
                Command("ZADD", self._key("model", batch.model, "batches"), (batch.created_at, batch.id))]

    def _counts(self, batch: Batch) -> list[Command]:
        counts = self._key("model", batch.model, "site", batch.site, "counts")
        fields = [("batches", 1), ("samples", batch.samples), *((str(k), n) for k, n in enumerate(batch.class_counts))]
        return [Command("HINCRBY", counts, (field, n)) for field, n in fields]

    def _usage(self, batch: Batch, stored_bytes: int) -> list[Command]:
        usage = self._key("site", batch.site, "usage")
        return [Command("HINCRBY", usage, ("bytes", stored_bytes)),
                Command("HINCRBY", usage, (_day(batch.created_at), 1))]

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
        """The state and the active-batches index in one transaction; on a cluster the index follows the state
        (`active` skips a final state the index still lists, if a process died in between)."""
        key, active = self._key("batch", check_batch_id(batch_id), "state"), self._key("batches", "active")

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            pipe.set(key, state.model_dump_json())
            if state.status in FINAL_BATCH:
                return [Command("ZREM", active, (batch_id,))]
            return [Command("ZADD", active, (state.updated_at, batch_id))]

        self._writer.transaction(txn, at=key)

    @translated
    def active(self, unchanged_for_s: float = 0.0) -> list[tuple[str, BatchState]]:
        """Batches not yet promoted, rejected or failed whose state has not changed for `unchanged_for_s`."""
        ids = self.r.zrangebyscore(self._key("batches", "active"), "-inf", now() - unchanged_for_s)
        raws = self._writer.mget([self._key("batch", i, "state") for i in ids])
        states = [(i, parse(BatchState, raw)) for i, raw in zip(ids, raws, strict=True) if raw is not None]
        return [(i, state) for i, state in states if state.status not in FINAL_BATCH]

    @translated
    def of_model(self, model: str) -> list[Batch]:
        ids = self.r.zrange(self._key("model", check_name(model), "batches"), 0, -1)
        raws = self._writer.mget([self._key("batch", i) for i in ids])
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


def _same_slot(a: str, b: str) -> bool:
    return bool(key_slot(a.encode()) == key_slot(b.encode()))


def _day(at: float) -> str:
    """The UTC day of a time, as a usage hash field ("day:YYYY-MM-DD")."""
    return "day:" + time.strftime("%Y-%m-%d", time.gmtime(at))

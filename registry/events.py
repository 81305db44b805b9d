"""Streams: the per-model audit trail, the alerts stream and the ingest queue.

    {p}:events:{m}     stream  Event JSON per entry (the audit trail `clreg events` reads)
    {p}:alerts         stream  Event JSON of every alert, all models
    {p}:ingest         stream  {"batch": id, "model": m}; consumer group "daemon" (at-least-once)

An ingest entry stays in its consumer's pending list until the batch reaches a verdict. A live daemon
touches its pending entries at every heartbeat, so only a dead daemon's entries grow idle, and another
daemon claims them (XAUTOCLAIM) once they have been idle for the claim time.
"""

from __future__ import annotations

from typing import Any

import redis

from clreg.registry.connection import StreamEntry, translated
from clreg.registry.records import AliasChange, Event, check_name, parse
from clreg.registry.store import RedisRegistry

GROUP = "daemon"
RECENT = 500  # events append_once looks back over: more than one update writes, replays included
# Every kind of event clreg records (webhook subscriptions name them; tests/registry/test_events.py checks the
# code appends no other).
EVENT_KINDS = frozenset({
    "batch.received", "drift.checked", "drift.alert", "drift.failed",
    "update.started", "update.resumed", "update.retrying", "update.taken_over", "update.finished",
    "update.failed", "update.abandoned", "gate.passed", "gate.failed", "alias.moved",
    "serving.swapped", "serving.failed", "retention.archived", "site.readiness",
    "shadow.started", "shadow.failed", "shadow.finished",
    "batch.waiting", "batch.rejected", "batch.withdrawn",
    "approval.requested", "approval.approved", "approval.declined",
    "batch.locked", "locked.scored", "protocol.changed",
    "canary.started", "canary.failed", "canary.finished",
})
ALERT_KINDS = frozenset({"drift.alert", "gate.failed", "update.failed", "serving.failed", "update.abandoned",
                         "site.readiness", "shadow.failed", "batch.rejected", "canary.failed"})


class EventLog:
    """Append and read events; alert kinds also go to the global alerts stream."""

    def __init__(self, registry: RedisRegistry, maxlen: int = 100_000) -> None:
        self._reg = registry
        self._maxlen = maxlen

    @translated
    def append(self, model: str, kind: str, **data: Any) -> Event:
        """Append to the model's stream and, for an alert, the alerts stream: both or neither on one Redis (one
        MULTI/EXEC); on a cluster the streams lie in different slots and the alert follows the event."""
        event = Event(model=model, kind=kind, data=data)
        body = {"json": event.model_dump_json()}
        pipe = self._reg.r.pipeline(transaction=not self._reg.writer.cluster)
        pipe.xadd(self._reg.key("events", model), body, maxlen=self._maxlen, approximate=True)
        if kind in ALERT_KINDS:
            pipe.xadd(self._reg.key("alerts"), body, maxlen=self._maxlen, approximate=True)
        entry_id = pipe.execute()[0]
        return event.model_copy(update={"id": entry_id})

    def append_once(self, model: str, kind: str, keys: tuple[str, ...], **data: Any) -> Event:
        """Append unless one of the model's newest RECENT events is of this kind with the same `keys` fields: the
        event of a pipeline step that a replay after a crash runs again (its writer holds the model's update
        lease, so no one else appends it between the look and the append)."""
        for event in self.latest(model, RECENT):
            if event.kind == kind and all(event.data.get(k) == data.get(k) for k in keys):
                return event
        return self.append(model, kind, **data)

    def entries(self, model: str, kind: str, **data: Any) -> list[StreamEntry]:
        """The stream entries `append` would write, for a store transaction that writes them with its records."""
        body = {"json": Event(model=check_name(model), kind=kind, data=data).model_dump_json()}
        keys = [self._reg.key("events", model)] + ([self._reg.key("alerts")] if kind in ALERT_KINDS else [])
        return [StreamEntry(key, body, self._maxlen) for key in keys]

    def alias_moved(self, change: AliasChange, **extra: Any) -> list[StreamEntry]:
        """The alias.moved event of a change, for the promotion's own transaction (see RedisRegistry.promote)."""
        approved = {"approvers": change.approvers, "request": change.request} if change.request else {}
        return self.entries(change.model, "alias.moved", alias=change.alias, to=change.to_version,
                            frm=change.from_version, who=change.who, reason=change.reason, **approved, **extra)

    @translated
    def read(self, model: str, since: float = 0.0, count: int = 1000) -> list[Event]:
        """Events of one model at or after `since` (epoch seconds), oldest first."""
        start = f"{int(since * 1000)}-0"
        entries = self._reg.r.xrange(self._reg.key("events", check_name(model)), min=start, count=count)
        return [parse(Event, f["json"]).model_copy(update={"id": i}) for i, f in entries]

    @translated
    def latest(self, model: str, count: int = 100) -> list[Event]:
        """The newest `count` events of one model, newest first."""
        entries = self._reg.r.xrevrange(self._reg.key("events", check_name(model)), count=count)
        return [parse(Event, f["json"]).model_copy(update={"id": i}) for i, f in entries]

    @translated
    def after(self, model: str, cursor: str, count: int = 500) -> list[Event]:
        """Events of one model strictly after stream id `cursor`, oldest first (the webhook fan-out's read)."""
        entries = self._reg.r.xrange(self._reg.key("events", check_name(model)), min=f"({cursor}", count=count)
        return [parse(Event, f["json"]).model_copy(update={"id": i}) for i, f in entries]

    @translated
    def alerts(self, model: str | None = None, since: float = 0.0, count: int = 1000, *,
               site: str | None = None, kind: str | None = None) -> list[Event]:
        """Alerts at or after `since`, oldest first; model, site (in the alert's data) and kind narrow them."""
        start = f"{int(since * 1000)}-0"
        entries = self._reg.r.xrange(self._reg.key("alerts"), min=start, count=count)
        events = [parse(Event, f["json"]).model_copy(update={"id": i}) for i, f in entries]
        return [e for e in events if (model is None or e.model == model) and (kind is None or e.kind == kind)
                and (site is None or e.data.get("site") == site)]


class IngestQueue:
    """The ingest stream with a consumer group: entries stay pending until acked, so a crash resumes."""

    def __init__(self, registry: RedisRegistry, consumer: str = "daemon-1") -> None:
        self._reg = registry
        self._key = registry.key("ingest")
        self.consumer = consumer

    @translated
    def ensure_group(self) -> None:
        try:
            self._reg.r.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    @translated
    def push(self, model: str, batch_id: str) -> str:
        return str(self._reg.r.xadd(self._key, {"model": model, "batch": batch_id}))

    def entry(self, model: str, batch_id: str) -> StreamEntry:
        """The entry `push` would write, for a store transaction that enqueues the batch with its record."""
        return StreamEntry(self._key, {"model": model, "batch": batch_id})

    @translated
    def read(self, block_ms: int = 1000, count: int = 16, pending: bool = False) -> list[tuple[str, str, str]]:
        """(entry id, model, batch id) tuples; `pending=True` re-reads what this consumer never acked."""
        streams = {self._key: "0" if pending else ">"}
        reply = self._reg.r.xreadgroup(GROUP, self.consumer, streams, count=count,
                                       block=None if pending else block_ms)
        out: list[tuple[str, str, str]] = []
        for _stream, entries in reply or []:
            out.extend((i, f["model"], f["batch"]) for i, f in entries if f)
        return out

    @translated
    def ack(self, entry_id: str) -> None:
        self._reg.r.xack(self._key, GROUP, entry_id)

    @translated
    def claim_idle(self, min_idle_s: float, count: int = 16) -> list[tuple[str, str, str]]:
        """Take over entries another consumer left idle for `min_idle_s` (it died holding them)."""
        cursor, out = "0-0", list[tuple[str, str, str]]()
        while len(out) < count:
            reply = self._reg.r.xautoclaim(self._key, GROUP, self.consumer, int(min_idle_s * 1000),
                                           start_id=cursor, count=count)
            cursor, entries = reply[0], reply[1]
            out.extend((i, f["model"], f["batch"]) for i, f in entries if f)
            if cursor == "0-0":
                break
        return out

    @translated
    def touch(self, limit: int = 1000) -> int:
        """Reset the idle time of this consumer's pending entries (it is alive: nobody may claim them)."""
        pending = self._reg.r.xpending_range(self._key, GROUP, min="-", max="+", count=limit,
                                             consumername=self.consumer)
        ids = [p["message_id"] for p in pending]
        if ids:
            self._reg.r.xclaim(self._key, GROUP, self.consumer, 0, ids, justid=True)
        return len(ids)

    @translated
    def holders(self) -> dict[str, int]:
        """Consumers holding entries not yet acknowledged, with how many each holds."""
        try:
            return {c["name"]: int(c["pending"]) for c in self._reg.r.xinfo_consumers(self._key, GROUP)}
        except redis.ResponseError:  # no stream or group yet
            return {}

    @translated
    def backlog(self) -> int:
        """Entries delivered but not acked plus entries never delivered."""
        if not self._reg.r.exists(self._key):  # before any push or gateway start
            return 0
        groups = {g["name"]: g for g in self._reg.r.xinfo_groups(self._key)}
        group = groups.get(GROUP)
        if group is None:
            return int(self._reg.r.xlen(self._key))
        return int(group.get("pending", 0)) + int(group.get("lag") or 0)

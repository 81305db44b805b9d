"""Streams: the per-model audit trail, the alerts stream, the ingest queue and the per-model update lock.

    {p}:events:{m}     stream  Event JSON per entry (the audit trail `clreg events` reads)
    {p}:alerts         stream  Event JSON of every alert, all models
    {p}:ingest         stream  {"batch": id, "model": m}; consumer group "daemon" (at-least-once)
    {p}:lock:{m}       string  holder token with a lease (PX)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from registry.errors import StoreUnavailable
from registry.records import Event, check_name, parse
from registry.store import RedisRegistry, translated

GROUP = "daemon"
ALERT_KINDS = frozenset({"drift.alert", "gate.failed", "update.failed", "serving.failed"})

# Release a lock only if we still hold it (a lease that expired may belong to someone else now).
log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class EventLog:
    """Append and read events; alert kinds also go to the global alerts stream."""

    def __init__(self, registry: RedisRegistry, maxlen: int = 100_000) -> None:
        self._reg = registry
        self._maxlen = maxlen

    @translated
    def append(self, model: str, kind: str, **data: Any) -> Event:
        event = Event(model=model, kind=kind, data=data)
        body = {"json": event.model_dump_json()}
        r = self._reg.r
        entry_id = r.xadd(self._reg.key("events", model), body, maxlen=self._maxlen, approximate=True)
        if kind in ALERT_KINDS:
            r.xadd(self._reg.key("alerts"), body, maxlen=self._maxlen, approximate=True)
        return event.model_copy(update={"id": entry_id})

    @translated
    def read(self, model: str, since: float = 0.0, count: int = 1000) -> list[Event]:
        """Events of one model at or after `since` (epoch seconds), oldest first."""
        start = f"{int(since * 1000)}-0"
        entries = self._reg.r.xrange(self._reg.key("events", check_name(model)), min=start, count=count)
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
    def backlog(self) -> int:
        """Entries delivered but not acked plus entries never delivered."""
        groups = {g["name"]: g for g in self._reg.r.xinfo_groups(self._key)}
        group = groups.get(GROUP)
        if group is None:
            return int(self._reg.r.xlen(self._key))
        return int(group.get("pending", 0)) + int(group.get("lag") or 0)


class Lease:
    """A per-model lock with a lease: one update per model at a time, released by its holder only."""

    def __init__(self, registry: RedisRegistry, model: str, lease_s: float = 900.0) -> None:
        self._reg = registry
        self._key = registry.key("lock", check_name(model))
        self._lease_ms = int(lease_s * 1000)
        self._token = uuid.uuid4().hex
        self._release = registry.r.register_script(_RELEASE)
        self._renew = registry.r.register_script(_RENEW)

    @translated
    def acquire(self) -> bool:
        return bool(self._reg.r.set(self._key, self._token, nx=True, px=self._lease_ms))

    @translated
    def release(self) -> None:
        self._release(keys=[self._key], args=[self._token])

    @translated
    def renew(self) -> bool:
        """Extend the lease by its full length; False when it is no longer ours (it expired and was taken)."""
        return bool(self._renew(keys=[self._key], args=[self._token, self._lease_ms]))

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease every third of its length while the block runs (an update may outlast one lease)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._lease_ms / 3000):
                try:
                    self.renew()
                except StoreUnavailable as e:  # Redis away for a moment: the next beat tries again
                    log.warning("lease renewal failed: %s", e)

        thread = threading.Thread(target=beat, name="clreg-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

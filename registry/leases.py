"""Per-model update leases that name their holder, so that a dead holder's lease is taken over at once.

    {p}:lock:{m}   JSON LeaseHold (holder incarnation + a nonce per acquisition), expiring unless renewed

A lease is free, held by a live process (respected), or held by a dead one: the next acquirer then swaps
it for its own in one compare-and-set, and resumes the work the lease protected (that is the caller's
job). The value also fences writes: `fence()` gives the key and value a store transaction checks before
it commits, so a holder that lost its lease cannot register or promote anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator

from pydantic import Field

from clreg.registry.connection import translated
from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.errors import LeaseLost, StoreUnavailable, UnreadableRecord
from clreg.registry.records import Incarnation, Record, check_name, now, parse
from clreg.registry.store import RedisRegistry

log = logging.getLogger(__name__)

_TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Nonces of the leases this process holds right now: a lease of our own incarnation that is not among them
# was left by an earlier update of this process (its release failed while Redis was away) and is stale.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


class LeaseHold(Record):
    """The value of a lease key: who holds it, and which of their acquisitions it is."""

    holder: Incarnation
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    at: float = Field(default_factory=now)


@functools.cache
def tool() -> Incarnation:
    """This process as a lease holder when it is not a daemon (tests, one-off commands)."""
    return incarnation("tool", role="tool")


class Lease:
    """A per-model lock with a lease: one update per model at a time, released by its holder only."""

    def __init__(self, registry: RedisRegistry, model: str, holder: Incarnation | None = None,
                 lease_s: float = 60.0, alive: Callable[[Incarnation], bool] | None = None) -> None:
        self._reg = registry
        self._key = registry.key("lock", check_name(model))
        self._lease_ms = int(lease_s * 1000)
        self._alive = alive or Daemons(registry).alive
        self.hold = LeaseHold(holder=holder or tool(), nonce=uuid.uuid4().hex)
        self._value = self.hold.model_dump_json()
        self.taken_from: Incarnation | None = None  # the dead holder this lease was taken over from
        self.lost = False
        self._take = registry.r.register_script(_TAKE)
        self._release = registry.r.register_script(_RELEASE)
        self._renew = registry.r.register_script(_RENEW)

    @translated
    def acquire(self) -> bool:
        """Take the lease if it is free or its holder is dead; False while a live process holds it."""
        for _ in range(3):  # the key may change between our reads: look again
            if self._reg.r.set(self._key, self._value, nx=True, px=self._lease_ms):
                return self._held()
            raw = self._reg.r.get(self._key)
            if raw is None:
                continue
            current = self._current(raw)
            if current is not None and not self._stale(current):
                return False
            if self._take(keys=[self._key], args=[raw, self._value, self._lease_ms]):
                self.taken_from = current.holder if current else None
                return self._held()
        return False

    @translated
    def holder(self) -> Incarnation | None:
        """Who holds the lease now (None: free, or a lock written by an older clreg)."""
        raw = self._reg.r.get(self._key)
        current = self._current(raw) if raw else None
        return current.holder if current else None

    def _current(self, raw: str) -> LeaseHold | None:
        try:
            return parse(LeaseHold, raw)
        except UnreadableRecord:  # a lock written by an older clreg (a bare token): nobody to ask, take it
            return None

    def _stale(self, current: LeaseHold) -> bool:
        if current.holder.token == self.hold.holder.token:
            with _HELD_LOCK:
                return current.nonce not in _HELD
        return not self._alive(current.holder)

    def _held(self) -> bool:
        with _HELD_LOCK:
            _HELD.add(self.hold.nonce)
        self.lost = False
        return True

    @translated
    def release(self) -> None:
        with _HELD_LOCK:
            _HELD.discard(self.hold.nonce)
        self._release(keys=[self._key], args=[self._value])

    @translated
    def renew(self) -> bool:
        """Extend the lease by its full length; False when it is no longer ours (it expired and was taken)."""
        return bool(self._renew(keys=[self._key], args=[self._value, self._lease_ms]))

    def fence(self) -> tuple[str, str]:
        """(key, value) a store write checks in its transaction: it commits only while this lease holds."""
        return self._key, self._value

    def check(self) -> None:
        """Raise LeaseLost if a renewal found the lease taken (the caller must stop the work it protects)."""
        if self.lost:
            raise LeaseLost(f"the update lease of {self._key} was taken over by another process")

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease every third of its length while the block runs (an update may outlast one lease)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._lease_ms / 3000):
                try:
                    if not self.renew():
                        self.lost = True
                        log.error("update lease %s lost: another process took it over", self._key)
                except StoreUnavailable as e:  # Redis away for a moment: the next beat tries again
                    log.warning("lease renewal failed: %s", e)

        thread = threading.Thread(target=beat, name="clreg-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

"""Live daemons: each daemon process beats a key with a TTL, and leases and stream claims ask here who is alive.

    {p}:daemon:{name}   JSON Heartbeat, expiring after `ttl_s` without a beat
    {p}:daemons         hash  name -> its latest Heartbeat JSON, kept after it stops or dies (`clreg status`)

A holder is dead when its heartbeat expired, when its name beats with another incarnation's token (it was
restarted), or, on this host, when its process is gone: a SIGKILLed daemon is recognised at once by its
successor on the same machine, and within `ttl_s` anywhere else.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.connection import translated
from clreg.registry.errors import Conflict
from clreg.registry.records import Incarnation, Record, check_name, now, parse
from clreg.registry.store import RedisRegistry


class ProcessMemory(BaseModel):
    """One process of a daemon's machine-local stack and its resident memory."""

    model_config = ConfigDict(frozen=True)
    pid: int
    name: str = Field(max_length=80)  # its command, as ps shows it (Ray names its workers ray::<what they run>)
    rss_bytes: int = Field(ge=0)


class Heartbeat(Record):
    """A daemon's latest sign of life: what it is doing, stored with a TTL so that silence means death."""

    incarnation: Incarnation
    at: float = Field(default_factory=now)
    doing: str = ""
    processed: int = 0  # entries finished by this start
    stopped: bool = False  # it stopped cleanly (a start that died leaves its last beat with False)
    # Its process and every descendant (under `clreg up`: Valkey, Ray's GCS, raylet, workers and Serve
    # replicas), largest first: what the stack holds on this machine.
    memory: list[ProcessMemory] = Field(default_factory=list)


def this_host() -> str:
    return socket.gethostname() or "localhost"


def incarnation(name: str, role: str = "daemon") -> Incarnation:
    """The identity of this process under `name`, with a token no other start shares."""
    return Incarnation(name=check_name(name), host=this_host(), pid=os.getpid(), token=uuid.uuid4().hex,
                       role=role)  # type: ignore[arg-type]


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs under `pid` (a zombie, killed but not yet reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no procfs (macOS): kill(0) is all we know
        return True


class Daemons:
    """Heartbeats of the daemon processes sharing one registry."""

    def __init__(self, registry: RedisRegistry, ttl_s: float = 10.0) -> None:
        self._reg = registry
        self._ttl_ms = int(ttl_s * 1000)

    def _key(self, name: str) -> str:
        return self._reg.key("daemon", check_name(name))

    @translated
    def heartbeat(self, name: str) -> Heartbeat | None:
        raw = self._reg.r.get(self._key(name))
        return None if raw is None else parse(Heartbeat, raw)

    def alive(self, who: Incarnation) -> bool:
        """Whether that very start of the process still runs (see the module docstring).

        A tool (a test, a one-off command) does not beat: on another host only its lease's expiry says it died.
        """
        if who.host == this_host() and not pid_alive(who.pid):
            return False
        if who.role == "tool":
            return True
        beat = self.heartbeat(who.name)
        return beat is not None and beat.incarnation.token == who.token

    def register(self, me: Incarnation, wait_s: float = 0.0) -> Incarnation | None:
        """Start beating under `me.name`; returns the earlier start of this name if it died without stopping.

        Raises:
            Conflict: another live process runs under this name (still so after `wait_s`).
        """
        deadline = time.monotonic() + wait_s
        while True:
            beat = self.last(me.name)
            other = beat.incarnation if beat and beat.incarnation.token != me.token else None
            if other is None or not self.alive(other):
                self.beat(me)
                return other if beat is not None and not beat.stopped else None
            if time.monotonic() >= deadline:
                raise Conflict(f"daemon name {me.name!r} is in use by pid {other.pid} on {other.host}; "
                               "give each daemon its own name (--name or CLREG_DAEMON__NAME)")
            time.sleep(0.5)

    @translated
    def last(self, name: str) -> Heartbeat | None:
        """The latest heartbeat of a name, alive or not."""
        raw = self._reg.r.hget(self._reg.key("daemons"), check_name(name))
        return None if raw is None else parse(Heartbeat, raw)

    @translated
    def beat(self, me: Incarnation, doing: str = "", processed: int = 0, stopped: bool = False,
             memory: list[ProcessMemory] | None = None) -> None:
        beat = Heartbeat(incarnation=me, doing=doing, processed=processed, stopped=stopped, memory=memory or [])
        pipe = self._reg.r.pipeline(transaction=True)
        if stopped:
            pipe.delete(self._key(me.name))
        else:
            pipe.set(self._key(me.name), beat.model_dump_json(), px=self._ttl_ms)
        pipe.hset(self._reg.key("daemons"), me.name, beat.model_dump_json())
        pipe.execute()

    def retire(self, me: Incarnation, processed: int = 0) -> None:
        """A clean stop: the name is free at once (only if this start still holds it)."""
        beat = self.last(me.name)
        if beat is not None and beat.incarnation.token == me.token:
            self.beat(me, processed=processed, stopped=True)

    @translated
    def listing(self) -> list[tuple[Heartbeat, bool]]:
        """Every daemon that ever beat: its latest heartbeat, and whether it is alive now."""
        beats = [parse(Heartbeat, raw) for raw in self._reg.r.hvals(self._reg.key("daemons"))]
        ordered = sorted(beats, key=lambda b: b.incarnation.name)
        return [(b, not b.stopped and self.alive(b.incarnation)) for b in ordered]

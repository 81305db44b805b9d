"""Update leases name their holder: a live holder is respected, a dead one is taken over at once, and a
holder that lost its lease can neither register nor promote (fenced writes)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from clreg.registry import leases
from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.errors import Conflict, LeaseLost
from clreg.registry.leases import Lease
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _model(registry: RedisRegistry) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))


def test_one_holder_at_a_time_and_only_the_holder_releases(registry: RedisRegistry) -> None:
    a, b = Lease(registry, "m"), Lease(registry, "m")
    assert a.acquire() and not b.acquire()
    b.release()  # not the holder: no effect
    assert not b.acquire() and b.holder() == a.hold.holder
    a.release()
    assert b.acquire() and b.taken_from is None


def test_a_live_daemons_lease_is_respected(registry: RedisRegistry) -> None:
    daemons = Daemons(registry)
    other = incarnation("d-other")  # this very process, beating under another name
    daemons.register(other)
    assert Lease(registry, "m", other).acquire()
    mine = Lease(registry, "m", incarnation("d-mine"))
    assert not mine.acquire() and mine.holder() == other


def test_a_dead_daemons_lease_is_taken_over_at_once(registry: RedisRegistry) -> None:
    daemons = Daemons(registry, ttl_s=600)  # its heartbeat is still fresh: only its pid says it died
    dead = incarnation("d-dead").model_copy(update={"pid": _dead_pid()})
    daemons.beat(dead)
    assert Lease(registry, "m", dead, lease_s=600).acquire()
    started = time.monotonic()
    successor = Lease(registry, "m", incarnation("d-dead"))  # the same name, restarted
    assert successor.acquire() and time.monotonic() - started < 1.0
    assert successor.taken_from == dead and successor.holder() == successor.hold.holder


def test_a_holder_whose_heartbeat_names_a_newer_start_is_dead(registry: RedisRegistry) -> None:
    old, new = incarnation("d-x"), incarnation("d-x")
    Daemons(registry).beat(old)
    assert Lease(registry, "m", old).acquire()
    Daemons(registry).beat(new)  # the name restarted (on another host, say): the old start is gone
    lease = Lease(registry, "m", new)
    assert lease.acquire() and lease.taken_from == old


def test_an_own_lease_left_by_a_finished_update_of_this_process_is_stale(registry: RedisRegistry) -> None:
    me = incarnation("d-me")
    Daemons(registry).beat(me)
    first = Lease(registry, "m", me)
    assert first.acquire()
    assert not Lease(registry, "m", me).acquire()  # still held in this process: a second update waits
    with leases._HELD_LOCK:
        leases._HELD.discard(first.hold.nonce)  # as if its release had failed while Redis was away
    assert Lease(registry, "m", me).acquire()


def test_register_and_promote_are_fenced_by_the_lease(registry: RedisRegistry) -> None:
    _model(registry)
    me, successor = incarnation("d-a"), incarnation("d-b")
    lease = Lease(registry, "m", me.model_copy(update={"pid": _dead_pid()}))
    assert lease.acquire()
    v1 = registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()), fence=lease.fence())
    assert Lease(registry, "m", successor).acquire()  # the first holder "died"; its lease is taken
    seq = registry.r.get(registry.key("model", "m", "seq"))
    with pytest.raises(LeaseLost):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()), fence=lease.fence())
    with pytest.raises(LeaseLost):
        registry.promote("m", v1.number, who="daemon", reason="late", fence=lease.fence())
    assert registry.r.get(registry.key("model", "m", "seq")) == seq and registry.resolve("m") is None
    assert isinstance(LeaseLost("x"), Conflict)


def test_a_kept_alive_lease_outlasts_its_length_and_a_lost_one_is_noticed(registry: RedisRegistry) -> None:
    holder, other = Lease(registry, "m", lease_s=1.0), Lease(registry, "m", lease_s=1.0)
    assert holder.acquire()
    with holder.kept_alive():
        for _ in range(10):  # 2.5 s: two and a half lease lengths
            time.sleep(0.25)
            assert not other.acquire()
        registry.r.set(registry.key("lock", "m"), other.hold.model_dump_json())  # taken behind its back
        time.sleep(0.5)
    assert holder.lost
    with pytest.raises(LeaseLost):
        holder.check()

"""Heartbeats: one live process per daemon name, death seen through the pid on this host or the TTL elsewhere;
ingest entries of a live consumer stay its own, a dead consumer's are claimed once idle."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.errors import Conflict
from clreg.registry.events import IngestQueue
from clreg.registry.store import RedisRegistry

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_name_runs_once_and_a_dead_start_is_replaced(registry: RedisRegistry) -> None:
    daemons = Daemons(registry)
    first = incarnation("d-1")
    assert daemons.register(first) is None
    with pytest.raises(Conflict, match="in use by pid"):
        daemons.register(incarnation("d-1"))  # the first start is alive: a second process may not take the name
    dead = first.model_copy(update={"pid": _dead_pid()})
    daemons.beat(dead)  # the name's holder is now a process that exited
    restarted = incarnation("d-1")
    assert daemons.register(restarted) == dead
    assert daemons.alive(restarted) and not daemons.alive(dead)


def test_silence_means_death_for_a_daemon_on_another_host(registry: RedisRegistry) -> None:
    daemons = Daemons(registry, ttl_s=0.5)
    remote = incarnation("d-remote").model_copy(update={"host": "elsewhere"})
    daemons.beat(remote, doing="m: batch abc")
    assert daemons.alive(remote)
    [(beat, alive)] = daemons.listing()
    assert alive and beat.incarnation == remote and beat.doing == "m: batch abc"
    time.sleep(0.7)
    assert not daemons.alive(remote)
    assert daemons.listing() == [(beat, False)]  # listed as dead, with its last beat


def test_a_clean_stop_frees_the_name_and_is_not_taken_for_a_crash(registry: RedisRegistry) -> None:
    daemons = Daemons(registry)
    first = incarnation("d-2")
    daemons.register(first)
    daemons.retire(first, processed=3)
    [(beat, alive)] = daemons.listing()
    assert beat.stopped and beat.processed == 3 and not alive
    assert daemons.register(incarnation("d-2")) is None  # free at once, and no crash to report


def test_a_live_consumers_entries_are_not_claimed_and_a_dead_ones_are(registry: RedisRegistry) -> None:
    live, dead, other = (IngestQueue(registry, c) for c in ("d-live", "d-dead", "d-other"))
    live.ensure_group()
    for i in range(4):
        live.push("m", f"{i:064x}")
    assert len(live.read(block_ms=10, count=2)) == 2 and len(dead.read(block_ms=10, count=2)) == 2
    time.sleep(0.3)
    assert live.touch() == 2  # the live one beats; the dead one does not
    claimed = other.claim_idle(min_idle_s=0.2)
    assert sorted(b for _, _, b in claimed) == [f"{2:064x}", f"{3:064x}"]
    assert other.holders() == {"d-live": 2, "d-dead": 0, "d-other": 2}

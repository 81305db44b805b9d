"""The stack's memory, process by process: this process and its descendants, in a daemon's heartbeat, in
/v1/status's figures and on /metrics."""

from __future__ import annotations

import subprocess
import sys
import time

from clreg.memory import stack_memory
from clreg.registry.daemons import Daemons, incarnation
from clreg.registry.status import StuckRule, pipeline_status
from clreg.registry.store import RedisRegistry
from clreg.serving.metrics import _memory


def test_the_process_tree_is_read_largest_first_and_reaches_the_heartbeat(registry: RedisRegistry) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        for _ in range(100):  # until the child holds its 64 MiB
            procs = {p.pid: p for p in stack_memory()}
            if child.pid in procs and procs[child.pid].rss_bytes > 64 << 20:
                break
            time.sleep(0.1)
        memory = stack_memory()
        assert {p.pid for p in memory} >= {child.pid} and memory[0].rss_bytes >= memory[-1].rss_bytes
        mine = next(p for p in memory if p.pid == child.pid)
        assert mine.rss_bytes > 64 << 20 and mine.name.startswith("python")
        me = incarnation("mem-test")
        Daemons(registry).beat(me, memory=memory)
        status = pipeline_status(registry, StuckRule())
        line = next(d for d in status.daemons if d.heartbeat.incarnation.name == "mem-test")
        assert line.alive and line.heartbeat.memory == memory
        rss = _memory(status)
        samples = {(s.labels["daemon"], s.labels["pid"]): s.value for s in rss.samples}
        assert samples[("mem-test", str(child.pid))] == mine.rss_bytes
    finally:
        child.kill()
        child.wait()


_IDLE = """
import json, os, sys, time
import psutil, ray
from clreg.embedded import start_ray
from clreg.settings import RaySettings

@ray.remote
def held() -> int:
    global keep
    keep = bytearray(128 << 20)  # what a candidate leaves behind in its worker
    return os.getpid()

out = {}
for idle in (0, None):
    start_ray(RaySettings(num_cpus=1, idle_workers=idle))
    pid = ray.get(held.remote())
    deadline = time.monotonic() + 8
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    out[str(idle)] = psutil.pid_exists(pid)
    ray.shutdown()
print(json.dumps(out))
"""


def test_a_local_ray_releases_a_worker_after_its_task_unless_told_to_keep_it_warm() -> None:
    """CLREG_RAY__IDLE_WORKERS=0 (the default): the ~550 MiB a candidate leaves in its worker is given back."""
    done = subprocess.run([sys.executable, "-c", _IDLE], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == '{"0": false, "None": true}'

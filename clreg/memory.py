"""What the stack holds in memory on this machine: this process and its descendants, process by process.

Under `clreg up` the daemon's process started everything (Valkey, Ray's GCS and raylet, whose children are the
workers, Serve replicas and proxy), so its process tree is the whole local stack. The daemon puts the figures in
its heartbeat; `clreg status`, GET /v1/status and /metrics read them from there.
"""

from __future__ import annotations

import psutil

from clreg.registry.daemons import ProcessMemory

MAX_PROCESSES = 64  # the largest ones, in a heartbeat


def process_name(proc: psutil.Process) -> str:
    """The process as ps shows it: Ray's workers retitle themselves (ray::ServeReplica:predict:ModelServer)."""
    line = proc.cmdline()
    first = line[0] if line else proc.name()
    if first.startswith("ray::"):
        return str(first[:80])
    words = " ".join(w.rsplit("/", 1)[-1] for w in line[:3])
    return " ".join(words.split())[:80] or proc.name()[:80]


def stack_memory(root: psutil.Process | None = None) -> list[ProcessMemory]:
    """Resident memory of `root` (this process) and every descendant, largest first (processes that ended
    while they were read are left out)."""
    root = root or psutil.Process()
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            out.append(ProcessMemory(pid=proc.pid, name=process_name(proc), rss_bytes=proc.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(out, key=lambda p: p.rss_bytes, reverse=True)[:MAX_PROCESSES]

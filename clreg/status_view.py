"""`clreg status` as tables and lines: models, daemons with the stack's memory, and what waits or is stuck."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def show(console: Console, models: list[dict[str, Any]], pipeline: dict[str, Any]) -> None:
    """Print GET /v1/models and GET /v1/status for a person."""
    table = Table("model", "production", "input", "classes")
    for m in models:
        spec = m["input"]
        table.add_row(m["name"], str(m["aliases"].get("production", "-")),
                      f"{spec['channels']}x{spec['height']}x{spec['width']}", str(spec["classes"]))
    console.print(table)
    _daemons(console, pipeline["daemons"])
    console.print(f"ingest backlog: {pipeline['backlog']}")
    for b in pipeline["stuck"]:
        console.print(f"[yellow]stuck[/] batch {b['batch_id'][:12]} {b['status']} for {b['seconds']:.0f} s "
                      f"{b['detail']}")
    for v in pipeline["abandoned"]:
        console.print(f"[yellow]abandoned[/] {v['model']} v{v['version']}: {v['reason']}")
    for s in pipeline.get("not_learnt", []):
        console.print(f"[yellow]not learnt[/] {s['model']}: site {s['site']} ({s['batches']} batches, "
                      f"{s['waiting']} waiting)")
    for w in pipeline.get("waiting", []):
        console.print(f"[yellow]waiting[/] batch {w['batch_id'][:12]} of {w['model']} at {w['site']}: {w['detail']}")


def _daemons(console: Console, daemons: list[dict[str, Any]]) -> None:
    """Each daemon's last heartbeat; for a live one, the memory of its process tree (under clreg up: the stack)."""
    table = Table("daemon", "state", "process", "last heartbeat", "doing", "finished", "memory GiB")
    for d in daemons:
        who, beat = d["heartbeat"]["incarnation"], d["heartbeat"]
        state = "alive" if d["alive"] else ("stopped" if beat["stopped"] else "[red]dead[/]")
        procs = beat.get("memory") or []
        memory = f"{sum(p['rss_bytes'] for p in procs) / 2**30:.2f} in {len(procs)}" if d["alive"] and procs else "-"
        table.add_row(who["name"], state, f"{who['pid']}@{who['host']}", f"{d['seconds_since_beat']:.0f} s ago",
                      beat["doing"] or "-", str(beat["processed"]), memory)
    console.print(table)
    for d in daemons:
        procs = d["heartbeat"].get("memory") or []
        if d["alive"] and procs:
            top = ", ".join(f"{p['name']} {p['rss_bytes'] / 2**20:.0f} MiB" for p in procs[:5])
            console.print(f"largest under {d['heartbeat']['incarnation']['name']}: {top}")

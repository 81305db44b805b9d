"""The terminal tables of bench/realnet.py (the docs' tables come from bench/learning_tables.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_tables(results: list[dict[str, Any]], side: int, clients: tuple[int, ...], swaps: int) -> None:
    """bench/realnet.py's tables on the terminal: each update's steps and bytes, serving, swaps and memory."""
    console = Console(width=180)
    steps_table = Table("network", "site", "status", "push->verdict s", "drift s", "epoch s", "fisher s",
                        "fisher/epoch", "gate s", "ref+calib s", "swap s", "stored MiB", "new MiB", "new/weights",
                        title=f"updates through the daemon at 1x{side}x{side}")
    for r in results:
        for u, b in zip(r["updates"], r["bytes"], strict=True):
            steps_table.add_row(r["network"], u["site"], u["status"], f"{u['push_to_verdict']:.1f}",
                                f"{u['drift']:.1f}", f"{u['epoch']:.1f}", f"{u['fisher']:.1f}",
                                f"{u['fisher_over_epoch']:.2f}", f"{u['gate']:.1f}",
                                f"{u['reference_calibration']:.1f}", f"{u.get('swap', float('nan')):.2f}",
                                f"{b['bytes'] / 2**20:.1f}", f"{b['new_bytes'] / 2**20:.1f}",
                                f"{b['new_over_weights']:.2f}")
    console.print(steps_table)
    serve_table = Table("network", "clients", "clreg req/s", "bare req/s", "ratio", "clreg p50/p99 ms",
                        "bare p50/p99 ms", "failed", title="serving one 224x224 npz image per request")
    for r in results:
        by = {(row["side"], row["clients"]): row for row in r["serving"]}
        for c in clients:
            a, b = by[("clreg", c)], by[("bare", c)]
            serve_table.add_row(r["network"], str(c), f"{a['rps']:.1f}", f"{b['rps']:.1f}",
                                f"{a['rps'] / b['rps']:.2f}", f"{a['p50_ms']:.0f}/{a['p99_ms']:.0f}",
                                f"{b['p50_ms']:.0f}/{b['p99_ms']:.0f}", str(a["failed"] + b["failed"]))
    console.print(serve_table)
    for r in results:
        s = r["swaps"]
        console.print(f"{r['network']}: {swaps} swaps under 16 clients: {s['failed']} failed of {s['requests']}, "
                      f"worst {s['during_worst_ms']:.0f} ms = {s['worst_over_steady_p99']:.2f}x steady p99; "
                      f"peak RSS worker {r['peak_rss_mib']['worker']:.0f} MiB, replica "
                      f"{r['peak_rss_mib']['replica']:.0f} MiB")

"""The registry and serving benchmarks' tables: the registry against MLflow, serving, the pipeline, swaps, a
killed replica, multiplexing and the console (bench/tables.py puts them on the pages)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.cells import Json, num, table

# --- registry --------------------------------------------------------------------------------------------

REGISTRY_ROWS = {
    "register": "register",
    "promote": "promote (alias move + history)",
    "resolve+record": "alias to its version record (clreg `version_by_alias`, MLflow `get_model_version_by_alias`)",
    "resolve-alias": "resolve alias only (clreg returns a number)",
    "list-cold": "list every version with aliases, nothing cached",
    "list": "list every version, clreg's memo of parsed records warm",
}


def registry(r: Json) -> str:
    """clreg on one Redis against MLflow (the headline ratio), then clreg's p50 behind Sentinel and on a Cluster."""
    headline = r.get("headline", {}).get("operation")
    topologies = [k for k in ("clreg-sentinel", "clreg-cluster") if k in r["figures"]]
    rows = []
    for op, label in REGISTRY_ROWS.items():
        c, m = r["figures"]["clreg"][op], r["figures"]["mlflow"][op]
        ratio = f"{m['p50_ms'] / c['p50_ms']:.1f}x"
        rows.append([label, num(c["p50_ms"]), num(c["p99_ms"]), num(m["p50_ms"]), num(m["p99_ms"]),
                     f"**{ratio}**" if op == headline else ratio,
                     *(f"{num(r['figures'][t][op]['p50_ms'])} / {num(r['figures'][t][op]['p99_ms'])}"
                       for t in topologies)])
    names = {"clreg-sentinel": "clreg behind Sentinel p50 / p99", "clreg-cluster": "clreg on a Cluster p50 / p99"}
    return table(["operation", "clreg p50", "clreg p99", "MLflow p50", "MLflow p99", "MLflow / clreg (p50)",
                  *(names[t] for t in topologies)], rows)


# --- serving, pipeline ------------------------------------------------------------------------------------

def model_label(name: str, spec: Sequence[int]) -> str:
    size, width = spec
    return f"{'small CNN' if width == 1 else f'{width}x wider CNN'}, 1x{size}x{size}"


def serving(r: Json) -> str:
    cells = {(c["model"], c["clients"], c["batching"]): c for c in r["summary"]}
    rows = []
    for model, spec in r["settings"]["models"].items():
        for clients in r["settings"]["clients"]:
            off, on, wait, bare = (cells[(model, clients, b)] for b in ("off", "on", "wait-2ms", "bare"))
            rows.append([model_label(model, spec), str(clients), f"{bare['rps']:.0f}", f"{off['rps']:.0f}",
                         f"**{off['rps'] / bare['rps']:.2f}**", f"{on['rps']:.0f}", f"{wait['rps']:.0f}",
                         *(f"{num(c['p50_ms'])} / {num(c['p99_ms'])}" for c in (bare, off, on)),
                         str(sum(c["errors"] for c in (off, on, wait, bare)))])
    return table(["model", "clients", "req/s bare Serve", "req/s clreg", "clreg / bare", "req/s clreg batching on",
                  "req/s on, wait 2 ms", "p50 / p99 ms bare", "p50 / p99 ms clreg", "p50 / p99 ms on", "failed"],
                 rows)


def serving_alone(r: Json) -> str:
    """The stack as `clreg up` starts it against a bare Serve deployment alone on the box, one at a time."""
    alone = r.get("clreg_up_vs_bare_alone")
    if not alone:
        return "*Not measured yet: run `python bench/serving.py`, then `python bench/tables.py`.*"
    cells = alone["cells"]
    rows = []
    for clients in r["settings"]["clients"]:
        up, bare = cells[f"clreg up@{clients}"], cells[f"bare alone@{clients}"]
        rows.append([str(clients), f"{up['rps']:.0f}", f"{bare['rps']:.0f}", f"**{up['rps'] / bare['rps']:.2f}**",
                     f"{num(up['p50_ms'])} / {num(up['p99_ms'])}", f"{num(bare['p50_ms'])} / {num(bare['p99_ms'])}",
                     str(up["errors"] + bare["errors"])])
    return table(["clients", "req/s clreg up", "req/s bare alone", "clreg up / bare", "p50 / p99 ms clreg up",
                  "p50 / p99 ms bare", "failed"], rows)


PIPELINE_STEPS = {
    "ingest": "ingest (HTTP push to 202, on disk)",
    "pickup": "pickup (202 until the daemon starts on it)",
    "drift": "drift (Evidently, against the production reference)",
    "train": "train (Ray task, 5 epochs on 700 samples)",
    "fisher": "Fisher diagonal of the new site",
    "reference_calibration": "drift reference + per-site calibration",
    "register": "register",
    "gate": "gate (every learnt site's held-out set)",
    "swap": "swap (alias move until every answer comes from the new version)",
    "push_to_verdict": "**push to verdict**",
    "death_to_takeover": "a daemon killed mid-training: kill until the survivor takes over",
    "death_to_verdict": "**kill until the survivor's verdict**",
}


def pipeline(r: Json) -> str:
    rows = []
    for step, label in PIPELINE_STEPS.items():
        runs = r["daemon_death"] if step.startswith("death") else r["push_to_verdict"]
        values = [run[step] for run in runs]
        median = num(r["median_s"][step], 2)
        rows.append([label, f"**{median}**" if label.startswith("**") else median, num(min(values), 2),
                     num(max(values), 2)])
    return table(["step", "median", "min", "max"], rows)


def swap(r: Json) -> str:
    f = r["summary"]
    return table(["requests", "failed", "alias move to every replica: median / max s", "steady p50 / p99 ms",
                  "during the swaps: p99 / worst ms", "worst / steady p99"],
                 [[str(f["requests"]), str(f["failed"]), f"{f['swap_median_s']:.3f} / {f['swap_max_s']:.3f}",
                   f"{f['steady_p50_ms']:.1f} / {f['steady_p99_ms']:.1f}",
                   f"{f['during_p99_ms']:.1f} / {f['during_worst_ms']:.1f}", f"{f['worst_over_steady_p99']:.2f}"]])


def replica_kill(r: Json) -> str:
    rows = [[str(f["replicas"]), str(f["requests"]), str(f["failed"]),
             ", ".join(f"{k}: {n}" for k, n in f["failed_kinds"].items()) or "-",
             f"{f['last_failure_after_kill_s']:.2f}", f"{f['replacement_answering_s']:.1f}",
             f"{f['steady_p99_ms']:.1f}", f"{f['worst_after_kill_ms']:.0f}"] for f in r["rows"]]
    return table(["replicas", "requests", "failed", "failed as", "last failure after the kill s",
                  "replacement answering s", "steady p99 ms", "worst after the kill ms"], rows)


def multiplex(r: Json) -> str:
    f, per = r["summary"], r["settings"]["per_replica"]
    kinds = ("memory_multiplexed_after", "memory_every_model")
    rss = {k: " / ".join(f"{m['rss_mib']:.0f}" for m in f[k]) for k in kinds}
    held = {k: " / ".join(str(m["models_held"]) for m in f[k]) for k in kinds}
    cw = f["cold_warm"]
    rows = []
    for label, key, mixed in ((f"models on demand, at most {per} per replica", "memory_multiplexed_after", f["mixed"]),
                              ("every model on every replica", "memory_every_model", f["mixed_every_model"])):
        rows.append([label, held[key], rss[key], f"{mixed['throughput_rps']:.0f}",
                     f"{mixed['p50_ms']:.0f} / {mixed['p99_ms']:.0f}", str(mixed["failed"])])
    body = table(["replicas", "models held", "replica RSS MiB", "mixed load req/s", "p50 / p99 ms", "failed"], rows)
    poll = f["poll"]
    return (f"{body}\n\nCold model (loaded by its request): p50 {cw['cold_p50_ms']:.0f} ms, max "
            f"{cw['cold_max_ms']:.0f} ms; warm p50 {cw['warm_p50_ms']:.0f} ms. A held model's promotion: answered "
            f"by the new version {f['swap_held']['seconds']:.2f} s after the alias move, swapped in place: "
            f"{'yes' if f['swap_held']['in_place'] else 'no'}. A replica's poll at rest: "
            f"{poll['1']['rest_round_trips']:.0f} round trip with 1 model and {poll['50']['rest_round_trips']:.0f} "
            f"with 50 ({poll['1']['rest_ms']:.2f} / {poll['50']['rest_ms']:.2f} ms); after a move "
            f"{poll['1']['moved_round_trips']:.0f} and {poll['50']['moved_round_trips']:.0f} "
            f"({poll['1']['moved_ms']:.2f} / {poll['50']['moved_ms']:.2f} ms).")


def console(r: Json) -> str:
    rows = [[f"`{c['path']}`", f"{c['p50_ms']:.0f}", f"{c['p95_ms']:.0f}", f"{c['bytes'] / 1024:.0f}",
             f"`{c['api_path']}`", f"{c['api_p50_ms']:.0f}"] for c in r["summary"]]
    return table(["page", "p50 ms", "p95 ms", "KiB", "JSON route with the same figures", "its p50 ms"], rows)

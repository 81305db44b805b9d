"""The benchmark pages' tables, rendered from bench/results/*.json so that no figure is copied by hand.

    python bench/tables.py          # rewrite every table in docs/ from the results
    python bench/tables.py --check  # exit 1, naming the tables, when a page under docs/ differs from the results

A table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->` on one page under docs/ (the benchmark
pages, docs/benchmarks/); below it a line names the result file, its commit and the CPU it ran on. A result
that does not exist yet (or predates the figures a table needs) gives a one-line placeholder that says what
to run. The prose around the tables is written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import freshness  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
Json = dict[str, Any]


class NotMeasured(Exception):
    """A result exists but lacks what the table needs (it predates the measurement)."""


def num(x: float, digits: int = 3) -> str:
    """x with `digits` significant digits in plain notation (0.048, 2.41, 196; 1234 stays whole)."""
    return f"{x:.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def lam(x: float) -> str:
    """An EWC lambda as the docs write it: 300, 3e3, 1e4."""
    return f"{x:.0f}" if x < 1000 else f"{x:.0e}".replace("e+0", "e").replace("e+", "e")


def pct(x: float) -> str:
    return f"{round(100 * x)}%"


def signed_points(x: float) -> str:
    return f"{100 * x:+.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def source(name: str, result: Json) -> str:
    """Which file, which commit, which CPU: what a reader needs to trust or redo a table."""
    commit = result.get("commit")
    short = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "") if commit else "not recorded"
    cpu = result.get("cpu_model") or result.get("machine", {}).get("cpu_model", "CPU not recorded")
    cores = result.get("machine", {}).get("cpus")
    return f"`bench/results/{name}.json`: commit {short}, {cpu}{f', {cores} cores' if cores else ''}"


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


# --- EWC -------------------------------------------------------------------------------------------------

EWC_ROWS = ("joint", "ewc-online/exact/per_site", "ewc-separate/exact/per_site", "ewc-online/mb-sq/per_site",
            "ewc-online/exact/freeze", "ewc-online/mb-sq/freeze", "ewc-online/exact/update", "naive/update")
BN_LABELS = {"per_site": "per-site BatchNorm", "freeze": "shared BatchNorm frozen",
             "update": "shared BatchNorm updated"}


def ewc_label(key: str) -> str:
    if key == "joint":
        return "joint training (upper bound)"
    if key.startswith("naive"):
        return "naive fine-tuning"
    mode, estimator, bn = key.split("/")
    fisher = "exact Fisher" if estimator == "exact" else "minibatch-squared Fisher"
    return f"EWC {mode.removeprefix('ewc-')}, {fisher}, {BN_LABELS[bn]}"


def ewc(r: Json, stream: str = "digits") -> str:
    results = r["results"][stream]
    best = max((k for k in EWC_ROWS if k.startswith("ewc")), key=lambda k: results[k]["ACC"]["mean"])
    rows = []
    for key in EWC_ROWS:
        row = results[key]
        acc = f"{row['ACC']['mean']:.3f} ± {row['ACC']['sd']:.3f}"
        joint = key == "joint"  # one model on all sites at once: nothing to forget
        rows.append([ewc_label(key), lam(row["lambda"]) if row.get("lambda") else "-",
                     f"**{acc}**" if key == best else acc, "-" if joint else f"{row['BWT']['mean']:+.3f}",
                     "-" if joint else f"{row['forgetting']['mean']:.3f}"])
    return table(["method", "lambda", "ACC", "BWT", "forgetting"], rows)


PAIRED_COLUMNS = {"ewc-separate/per_site": "per-site BatchNorm, separate", "ewc-online/per_site": "per-site, online",
                  "ewc-online/freeze": "frozen shared, online", "ewc-online/update": "updated shared, online"}


def paired_cell(p: Json | None) -> str:
    if p is None:
        return "-"
    lo, hi = p["ci95"]
    cell = f"{signed_points(p['mean'])} [{signed_points(lo)}, {signed_points(hi)}]"
    return f"**{cell}**" if lo > 0 or hi < 0 else cell  # bold: the interval excludes 0


def ewc_paired(r: Json, ten_seeds: Json) -> str:
    rows = []
    for stream, label in (("digits", "digits, 5 seeds"), ("permuted", "permuted pixels, 5 seeds")):
        paired = r["paired_exact_minus_minibatch_squared"][stream]
        rows.append([label] + [paired_cell(paired.get(k)) for k in PAIRED_COLUMNS])
    paired = ten_seeds["paired_exact_minus_minibatch_squared"]["digits"]
    rows.append(["digits, 10 seeds"] + [paired_cell(paired.get(k)) for k in PAIRED_COLUMNS])
    return table(["stream"] + list(PAIRED_COLUMNS.values()), rows)


# --- continual learning ----------------------------------------------------------------------------------

CONTINUAL_METHODS = {"joint": "joint training (bar)", "product": "**clreg default**", "ewc": "EWC 3e3 (old default)",
                     "replay": "replay only", "naive": "naive"}
STREAMS = {"digits": "digits", "permuted": "permuted pixels", "harsh": "harsh (chained shifts)"}


def continual(r: Json) -> str:
    rows = []
    for stream, stream_label in STREAMS.items():
        for method, label in CONTINUAL_METHODS.items():
            row = r["results"][stream][method]
            acc = f"{row['ACC']['mean']:.3f} ± {row['ACC']['sd']:.3f}"
            if method == "joint":
                rows.append([stream_label, label, acc] + ["-"] * 6)
                continue
            bars = row["bars"]
            rows.append([stream_label, label, f"**{acc}**" if method == "product" else acc,
                         f"{row['BWT']['mean']:+.3f}", f"{bars['ACC_vs_joint']:.2f}",
                         f"{bars['worst_site_vs_joint']:.2f}", str(row["candidates"]),
                         f"{row['train_seconds_mean']:.1f}", f"{row['update_seconds_mean']:.1f}"])
    return table(["stream", "method", "ACC", "BWT", "ACC / joint", "worst site / its joint", "K", "search s",
                  "s / update"], rows)


# --- Fisher, calibration, drift ---------------------------------------------------------------------------

def fisher(r: Json) -> str:
    rows = [[f["estimator"], num(f["seconds"], 2), f"{f['x_minibatch']:.2f}x", f"{f['rel_error']:.1e}",
             f"{f['cosine']:.3f}", f"{f['mass_ratio']:.2f}"] for f in r["figures"]]
    return table(["estimator", "seconds", "/ minibatch-squared", "relative error vs the loop", "cosine",
                  "mass / exact"], rows)


CONV_WAYS = ("rule", "best", "grouped", "unfolded", "paired")


def fisher_zoo(r: Json) -> str:
    """The zoo's exact Fisher against one training epoch, and the convolution ways (bench/fisher.py's "zoo")."""
    if "zoo" not in r:
        raise NotMeasured("`bench/results/fisher.json` predates the zoo's figures")
    rows = []
    for z in r["zoo"]:
        ways = z["conv_ways_s_16_samples"]
        rows.append([z["network"], f"1x{z['side']}x{z['side']}", str(z["samples"]), num(z["epoch_s"], 2),
                     num(z["fisher_s"], 2), f"**{z['fisher_over_epoch']:.2f}**",
                     " / ".join("-" if ways.get(w) is None else num(ways[w], 2) for w in CONV_WAYS)])
    return table(["network", "input", "samples", "epoch s", "Fisher s", "Fisher / epoch",
                  "convolutions on 16 samples, s: rule / best / grouped / unfolded / paired"], rows)


# --- real networks ----------------------------------------------------------------------------------------

def seconds(x: float | None, digits: int = 2) -> str:
    """Seconds with `digits` significant digits; "-" for a figure not taken (None or NaN)."""
    return "-" if x is None or x != x else num(x, digits)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def realnet(r: Json) -> str:
    """bench/realnet.py: each update's steps and bytes, serving against a bare deployment, swaps and memory."""
    updates = []
    for net in r["results"]:
        for u, b in zip(net["updates"], net["bytes"], strict=True):
            updates.append([net["network"], u["site"], u["status"], f"**{seconds(u['push_to_verdict'])}**",
                            seconds(u["drift"]), seconds(u["epoch"]), seconds(u["fisher"]),
                            seconds(u["fisher_over_epoch"]), seconds(u["gate"]), seconds(u["reference_calibration"]),
                            seconds(u.get("swap")), mib(b["bytes"]), mib(b["new_bytes"]), mib(b["weights_bytes"]),
                            f"{b['new_over_weights']:.2f}"])
    side = r.get("side", 224)
    steps = table(["network", "site", "status", "push to verdict s", "drift s", "epoch s", "Fisher s",
                   "Fisher / epoch", "gate s", "reference + calibration s", "swap s", "stored MiB", "new MiB",
                   "weights MiB", "new / weights"], updates)
    served = []
    for net in r["results"]:
        by = {(row["side"], row["clients"]): row for row in net["serving"]}
        for clients in sorted({c for _, c in by}):
            ours, bare = by[("clreg", clients)], by[("bare", clients)]
            served.append([net["network"], str(clients), f"{bare['rps']:.1f}", f"{ours['rps']:.1f}",
                           f"**{ours['rps'] / bare['rps']:.2f}**", f"{num(bare['p50_ms'])} / {num(bare['p99_ms'])}",
                           f"{num(ours['p50_ms'])} / {num(ours['p99_ms'])}", str(ours["failed"] + bare["failed"])])
    serving_table = table(["network", "clients", "req/s bare Serve", "req/s clreg", "clreg / bare",
                           "p50 / p99 ms bare", "p50 / p99 ms clreg", "failed"], served)
    rest = []
    for net in r["results"]:
        s, rss = net["swaps"], net["peak_rss_mib"]
        rest.append([net["network"], net.get("device", "-"), str(len(s.get("swap_s", [])) or "-"),
                     str(s["requests"]), str(s["failed"]), f"{s['worst_over_steady_p99']:.2f}",
                     f"{rss['worker']:.0f}", f"{rss['replica']:.0f}"])
    rest_table = table(["network", "device", "swaps under 16 clients", "requests", "failed", "worst / steady p99",
                        "peak RSS MiB, training worker", "peak RSS MiB, replica"], rest)
    return (f"Updates through the daemon at 1x{side}x{side} ({r.get('images_per_batch', '?')} images a batch, "
            f"{r.get('epochs', '?')} epochs):\n\n{steps}\n\nServing one {side}x{side} npz image a request:\n\n"
            f"{serving_table}\n\nSwaps under load and peak memory:\n\n{rest_table}")


def scale(r: Json) -> str:
    """bench/scale.py: each step's seconds at the checkpoints, quality against the ceiling, verdicts, costs."""
    s, res = r["summary"], r["result"]
    steps = ("push_to_verdict", "drift", "train", "fisher", "reference", "calibration", "gate", "promote")
    rows = [[str(k), *(f"**{seconds(row[st])}**" if st == "push_to_verdict" else seconds(row[st]) for st in steps)]
            for k, row in s["steps_at"].items()]
    timing = table(["learnt sites", "push to verdict s", "drift s", "train s", "Fisher s", "reference s",
                    "calibration s", "gate s", "promote s"], rows)
    served, cand = s["served"], s["candidates"]
    quality = table(["", "ACC", "BWT", "forgetting", "ACC / joint"], [
        ["served versions", num(served["ACC"]), f"{served['BWT']:+.3f}", num(served["forgetting"]),
         f"**{served['ACC'] / s['joint_ACC']:.3f}**"],
        ["candidates before their gate", num(cand["ACC"]), f"{cand['BWT']:+.3f}", num(cand["forgetting"]),
         f"{cand['ACC'] / s['joint_ACC']:.3f}"],
        ["joint training, per-site BatchNorm (ceiling)", num(s["joint_ACC"]), "-", "-", "1.000"]])
    cost, pages, idle = res["registry_cost"], res["pages_at_1000_versions"], res["idle_stack"]
    verdicts = ", ".join(f"{n} {k}" for k, n in sorted(s["verdicts"].items()))
    veto = "none" if s["smallest_veto_images"] is None else f"{s['smallest_veto_images']:g} images"
    new_bytes = cost["artifact_new_bytes_per_version"]
    lines = [
        f"Push to verdict at the {max(s['steps_at'])}th site / at the {min(s['steps_at'])}th: "
        f"**{s['push_to_verdict_ratio']:.2f}x**. Verdicts: {verdicts}; sites in the final served lineage: "
        f"{s['sites_in_final_lineage']} of {len(res['updates'])}; the smallest veto: {veto}.",
        f"Worst site {s['worst_site']}: {num(s['worst_site_acc'])} ({s['worst_site_over_its_joint']:.2f}x its "
        "ceiling).",
        f"Registry: Valkey {mib(cost['valkey_bytes'])} MiB, {cost['valkey_bytes_per_version'] / 1024:.1f} KiB a "
        f"version, {cost['valkey_bytes_per_site'] / 1024:.1f} KiB a site; artifacts "
        f"{mib(sum(new_bytes) / max(len(new_bytes), 1))} MiB new a version (mean).",
        f"At {pages['versions']} versions: `{pages['versions_json']['path']}` p50 "
        f"{num(pages['versions_json']['p50_ms'])} ms, the console's model page p50 "
        f"{num(pages['console_model_page']['p50_ms'])} ms.",
        f"Idle `clreg up` after one update: **{idle['rss_bytes'] / 2**30:.2f} GiB** in {len(idle['processes'])} "
        "processes."]
    return f"{timing}\n\n{quality}\n\n" + "\n".join(f"- {line}" for line in lines)


CALIBRATION_SITES = ("base", "contrast", "blur-noise", "speckle", "inverted", "mean")


def calibration(r: Json) -> str:
    s = r["summary"]
    rows = []
    for site in CALIBRATION_SITES:
        ece = [f"{s[m][site]['ECE']:.3f} ± {s[m][site]['ECE_sd']:.3f}" for m in ("none", "pooled", "per_site")]
        nll = [f"{s[m][site]['NLL']:.3f}" for m in ("none", "pooled", "per_site")]
        if site == "mean":
            ece[2], nll[2] = f"**{ece[2]}**", f"**{nll[2]}**"
        rows.append([f"**{site}**" if site == "mean" else site, f"{s['per_site'][site]['accuracy']:.3f}", *ece, *nll,
                     f"{s['per_site'][site]['temperature']:.2f}"])
    return table(["site", "accuracy", "ECE none", "ECE pooled", "ECE per site", "NLL none", "NLL pooled",
                  "NLL per site", "T per site"], rows)


def detection(d: Json) -> str:
    rates = [d[n] for n in sorted(d, key=int)]
    return " / ".join(str(round(100 * x)) for x in rates) + "%"


def drift(r: Json) -> str:
    ours, raw = r["results"]["clreg"], r["results"]["evidently raw pixels"]
    sizes = " / ".join(sorted(ours["detection"]["contrast"], key=int))
    rows = [[f"false alarms, unshifted batches of 200 ({ours['false_alarm_trials']} / {raw['false_alarm_trials']} "
             "trials)", pct(ours["false_alarm_rate_200"]), pct(raw["false_alarm_rate_200"])]]
    for shift in ours["detection"]:
        rows.append([f"{shift} at {sizes} ({ours['shift_trials']} / {raw['shift_trials']} trials)",
                     detection(ours["detection"][shift]), detection(raw["detection"][shift])])
    rows.append(["one check at 1,000 samples", f"{ours['check_seconds_1000']:.2f} s",
                 f"{raw['check_seconds_1000']:.2f} s"])
    return table(["", "clreg features", "Evidently, raw pixels"], rows)


def sites(r: Json) -> str:
    rows = []
    for site, f in r["summary"].items():
        rows.append([site, f"{f['prevalence']:.2f}", f"{f['ece_uncalibrated']:.3f}", at_least_floor(
                     f["ece_calibrated"], f["ece_floor"]), f"{f['ece_floor']:.3f}", _calibration_error(f),
                     at_least_floor(f["calibration_error_bias_corrected"], f.get("calibration_error_floor")),
                     f"{f['threshold']:.2f}", f"{f['cost_chosen']:.3f}", f"{f['cost_half']:.3f}",
                     f"{f['accuracy']:.3f} / {f['estimate']:.3f} / {f['checked']:.3f}", _shifted(f, "casemix"),
                     _shifted(f, "noise")])
    return table(["site", "prevalence", "ECE before", "ECE after", "ECE floor", "calibration error (95%)",
                  "corrected for its bias", "cost threshold", "cost there", "cost at 0.5",
                  "accuracy / estimate / checked", "harder cases: acc. / est. / checked (drift)",
                  "pixel noise: acc. / est. / checked (drift)"], rows)


def at_least_floor(value: float, floor: float | None) -> str:
    """An estimate, or "<= floor" where it lies under what a perfectly calibrated model shows on as many samples
    (it cannot be told from perfect calibration: printing 0.000 would read as proven)."""
    return f"<= {floor:.3f}" if floor is not None and value <= floor else f"{value:.3f}"


def _calibration_error(f: Json) -> str:
    """The debiased calibration error in bold with its 95% interval; "<= floor" under its noise floor (results
    from before the floor was measured print the estimate as it is)."""
    point = at_least_floor(f["calibration_error"], f.get("calibration_error_floor"))
    return f"**{point}** ({f['calibration_error_low']:.3f} to {f['calibration_error_high']:.3f})"


def _shifted(f: Json, kind: str) -> str:
    """Accuracy, the estimate and the checked estimate under a shift, each in bold where its alert fires, and how
    often the input watch's drift check flags the shifted traffic."""
    est, checked = f[f"{kind}_estimate"], f[f"{kind}_checked"]
    est_cell = f"**{est:.3f}**" if f[f"{kind}_alert"] else f"{est:.3f}"
    checked_cell = f"**{checked:.3f}**" if f[f"{kind}_checked_alert"] else f"{checked:.3f}"
    return f"{f[f'{kind}_accuracy']:.3f} / {est_cell} / {checked_cell} ({f[f'{kind}_drift']:.0%})"


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


# --- pages ------------------------------------------------------------------------------------------------

def load(name: str) -> Json:
    return json.loads((RESULTS / f"{name}.json").read_text())


def available(name: str) -> bool:
    return (RESULTS / f"{name}.json").exists()


RENDERERS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {  # block: (result files, its table)
    "registry": (("registry",), lambda: registry(load("registry"))),
    "ewc": (("ewc",), lambda: ewc(load("ewc"))),
    "ewc-paired": (("ewc", "ewc-freeze-10seeds"), lambda: ewc_paired(load("ewc"), load("ewc-freeze-10seeds"))),
    "continual": (("continual", "continual-selection"), lambda: continual(load("continual"))),
    "fisher": (("fisher",), lambda: fisher(load("fisher"))),
    "fisher-zoo": (("fisher",), lambda: fisher_zoo(load("fisher"))),
    "calibration": (("calibration",), lambda: calibration(load("calibration"))),
    "drift": (("drift",), lambda: drift(load("drift"))),
    "serving": (("serving",), lambda: serving(load("serving"))),
    "sites": (("sites",), lambda: sites(load("sites"))),
    "pipeline": (("pipeline",), lambda: pipeline(load("pipeline"))),
    "console": (("console",), lambda: console(load("console"))),
    "swap": (("swap",), lambda: swap(load("swap"))),
    "multiplex": (("multiplex",), lambda: multiplex(load("multiplex"))),
    "realnet": (("realnet",), lambda: realnet(load("realnet"))),
    "scale": (("scale",), lambda: scale(load("scale"))),
}
BLOCK = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n.*?<!-- /table:(?P=name) -->", re.S)


def producer(name: str) -> str:
    """The command that writes a result file (bench/ewc.py also writes ewc-freeze-10seeds, see its page)."""
    script = ROOT / "bench" / f"{name.split('-')[0]}.py"
    return f"`python bench/{script.name}`" if script.exists() else "its benchmark"


def render(name: str) -> str:
    """The block of one table; while its result is missing or predates it, one line saying what to run."""
    results, body = RENDERERS[name]
    missing = [r for r in results if not available(r)]
    try:
        if missing:
            files = ", ".join(f"`bench/results/{r}.json`" for r in missing)
            raise NotMeasured(f"{files} does not exist", missing[0])
        rendered = f"{body()}\n\n<sub>{'; '.join(source(r, load(r)) for r in results)}</sub>"
    except NotMeasured as e:
        reason, result = e.args[0], e.args[1] if len(e.args) > 1 else results[0]
        rendered = f"*Not measured yet: {reason}. Run {producer(result)}, then `python bench/tables.py`.*"
    return f"<!-- table:{name} -->\n{rendered}\n<!-- /table:{name} -->"


def regenerate(text: str) -> tuple[str, list[str]]:
    """text with every table block rendered afresh, and the names of the blocks that changed."""
    changed: list[str] = []

    def one(match: re.Match[str]) -> str:
        fresh = render(match["name"])
        if fresh != match[0]:
            changed.append(match["name"])
        return fresh

    return BLOCK.sub(one, text), changed


def pages() -> dict[Path, str]:
    """Every Markdown page under docs/ that holds a table block, with its text."""
    out = {}
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text()
        if BLOCK.search(text):
            out[path] = text
    return out


def placement(found: dict[Path, str]) -> list[str]:
    """What is wrong with where the blocks are: a table without a block, a block twice, a block of no table."""
    where: dict[str, list[Path]] = {}
    for path, text in found.items():
        for m in BLOCK.finditer(text):
            where.setdefault(m["name"], []).append(path)
    problems = [f"no block for {name}" for name in RENDERERS if name not in where]
    problems += [f"{name} appears {len(paths)} times ({', '.join(str(p.relative_to(ROOT)) for p in paths)})"
                 for name, paths in where.items() if len(paths) > 1]
    problems += [f"no renderer for the block {name}" for name in where if name not in RENDERERS]
    return problems


def outdated() -> dict[str, str]:
    """Every result a table shows that no longer describes the code (bench/freshness.py), with why."""
    names = sorted({r for results, _ in RENDERERS.values() for r in results if available(r)})
    return {name: why for name in names if (why := freshness.stale(name, load(name)))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is stale")
    args = parser.parse_args()
    found = pages()
    problems = placement(found)
    if problems:
        print("docs/ table blocks: " + "; ".join(problems), file=sys.stderr)
        return 1
    stale = []
    for path, text in found.items():
        fresh, changed = regenerate(text)
        if not changed:
            continue
        stale.append(f"{path.relative_to(ROOT)}: {', '.join(changed)}")
        if not args.check:
            path.write_text(fresh)
    if args.check:
        if stale:
            print(f"stale tables in {'; '.join(stale)} (run python bench/tables.py)", file=sys.stderr)
        old = outdated()
        for name, why in old.items():
            print(f"bench/results/{name}.json is out of date: {why}; rerun {producer(name)}, or record in "
                  "bench/results/still-valid.json why the changes leave its figures as they are", file=sys.stderr)
        return 1 if stale or old else 0
    print(f"rewrote {'; '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

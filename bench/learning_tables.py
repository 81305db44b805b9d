"""The learning benchmarks' tables: EWC, continual learning, Fisher, calibration, drift, sites, real networks
and many sites (bench/tables.py puts them on the pages)."""

from __future__ import annotations

from bench.cells import Json, NotMeasured, at_least_floor, lam, mib, num, pct, seconds, signed_points, table

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

def realnet(r: Json) -> str:
    """bench/realnet.py: each update's steps and bytes, serving against a bare deployment, swaps and memory."""
    updates = []
    for net in r["results"]:
        stored = net.get("bytes") or [None] * len(net["updates"])  # lost in a recovered run
        for u, b in zip(net["updates"], stored, strict=True):
            sizes = [mib(b["bytes"]), mib(b["new_bytes"]), mib(b["weights_bytes"]), f"{b['new_over_weights']:.2f}"] \
                if b else ["-"] * 4
            updates.append([net["network"], u["site"], u["status"], f"**{seconds(u['push_to_verdict'])}**",
                            seconds(u["drift"]), seconds(u["epoch"]), seconds(u["fisher"]),
                            seconds(u["fisher_over_epoch"]), seconds(u["gate"]), seconds(u["reference_calibration"]),
                            seconds(u.get("swap")), *sizes])
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
        if "swaps" not in net:  # lost in a recovered run
            continue
        s, rss = net["swaps"], net["peak_rss_mib"]
        rest.append([net["network"], net.get("device", "-"), str(len(s.get("swap_s", [])) or "-"),
                     str(s["requests"]), str(s["failed"]), f"{s['worst_over_steady_p99']:.2f}",
                     f"{rss['worker']:.0f}", f"{rss['replica']:.0f}"])
    rest_table = table(["network", "device", "swaps under 16 clients", "requests", "failed", "worst / steady p99",
                        "peak RSS MiB, training worker", "peak RSS MiB, replica"], rest) if rest else \
        "*Not in this result: " + r.get("recovered", "not measured") + "*"
    runs = {net["network"]: str(net["commit"])[:7] for net in r["results"] if net.get("commit")}
    when = ("\n\nMeasured at: " + ", ".join(f"{n} {c}" for n, c in runs.items()) + " (one network rerun keeps the "
            "other's result)") if len(set(runs.values())) > 1 else ""
    return (f"Updates through the daemon at 1x{side}x{side} ({r.get('images_per_batch', '?')} images a batch, "
            f"{r.get('epochs', '?')} epochs):\n\n{steps}\n\nServing one {side}x{side} npz image a request:\n\n"
            f"{serving_table}\n\nSwaps under load and peak memory:\n\n{rest_table}{when}")


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
    veto = "none" if s["smallest_veto_images"] is None else \
        f"{s['smallest_veto_images']:g} image{'' if s['smallest_veto_images'] == 1 else 's'} against production"
    if s.get("smallest_veto_judged") is not None:
        veto += f" ({s['smallest_veto_judged']:g} in the change its rule judged, since the best for the budget)"
    at = sorted(int(k) for k in s["steps_at"])
    new_bytes = cost["artifact_new_bytes_per_version"]
    lines = [
        f"Push to verdict at the {at[-1]}th site / at the {at[0]}th: "
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

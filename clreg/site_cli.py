"""`clreg sites list | report | threshold`: what sites pushed, whether a model is fit for use at each, and what a
threshold means there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clreg import terminal
from clreg.terminal import JsonOpt, console


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _span(pair: list[float] | None) -> str:
    return "-" if not pair else f"{pair[0]:.3f} - {pair[1]:.3f}"


def report(site: str, model: Annotated[str, typer.Option(help="the model served to the site")] = "digits",
           html: Annotated[Path | None, typer.Option(help="also write the HTML report to this file")] = None,
           as_json: JsonOpt = False) -> None:
    """The site's validation under the production version: readiness, accuracy and sensitivity with 95%
    intervals, calibration, and for binary models PPV and NPV at the site's threshold across prevalences."""
    client = terminal.client()
    answer = client.get(f"/v1/sites/{site}/validation", model=model)
    if html is not None:
        html.write_text(client.text(f"/v1/sites/{site}/validation", model=model, format="html"))
    if as_json:
        return terminal.emit(answer, True)
    held = answer["heldout"] or {}
    verdict = "[green]validated[/]" if answer["validated"] else "[red]not validated[/]: " + "; ".join(answer["reasons"])
    console.print(f"{site} under {model} v{answer['version']}: {verdict}")
    if held.get("metric"):
        console.print(f"{held['metric']} {_share(held.get('metric_value'))} (95% interval "
                      f"{_span(held.get('metric_interval'))}; answering every image the same class: "
                      f"{_share(held.get('metric_baseline'))}; samples per class {held.get('class_counts')})")
    table = Table("samples", "accuracy", "95% interval", "ECE before", "ECE after", "temperature")
    interval = held.get("accuracy_interval")
    table.add_row(str(held.get("samples", "-")), _share(held.get("accuracy")),
                  f"{interval[0]:.3f} - {interval[1]:.3f}" if interval else "-", _share(held.get("ece")),
                  _share(held.get("ece_calibrated")), _share(held.get("temperature")))
    console.print(table)
    if held.get("sensitivity"):
        per_class = Table("class", "sensitivity", "95% low", "95% high")
        for k, (value, low, high) in held["sensitivity"].items():
            per_class.add_row(k, _share(value), _share(low), _share(high))
        console.print(per_class)
    if html is not None:
        console.print(f"HTML report written to {html}")


def list_sites(as_json: JsonOpt = False) -> None:
    """Sites, their thresholds, and per model what they pushed: samples and label prevalence."""
    sites = terminal.client().get("/v1/sites")
    table = Table("site", "replay", "threshold", "model", "validated", "batches", "samples",
                  "prevalence (class: share)")
    marks = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}
    for s in sites:
        rows = s["models"].items() or [("-", None)]
        for model, c in rows:
            shares = " ".join(f"{k}:{p:.2f}" for k, p in enumerate(c["prevalence"])) if c else "-"
            table.add_row(s["name"], "yes" if s.get("replay", True) else "no",
                          "-" if s["threshold"] is None else f"{s['threshold']:g}", model,
                          marks[c.get("validated")] if c else "-",
                          str(c["batches"]) if c else "-", str(c["samples"]) if c else "-", shares)
    terminal.emit(sites, as_json, table)


def operating_point(site: str, model: Annotated[str, typer.Option(help="a binary model")] = "digits",
                    threshold: Annotated[float | None, typer.Option(help="score at or above it: positive")] = None,
                    sensitivity: Annotated[float | None, typer.Option(help="pick the threshold reaching it")] = None,
                    cost_fp: Annotated[float | None, typer.Option(help="cost of a false alarm")] = None,
                    cost_fn: Annotated[float | None, typer.Option(help="cost of a missed case")] = None,
                    prevalence: Annotated[float | None, typer.Option(help="price at it (default: held-out)")] = None,
                    set_it: Annotated[bool, typer.Option("--set", help="make it the site's threshold")] = False,
                    force: Annotated[bool, typer.Option(help="--set a cost-chosen threshold although the held-out "
                                                        "set has too few positives or negatives")] = False,
                    as_json: JsonOpt = False) -> None:
    """What a threshold means at a site: sensitivity, specificity, PPV, NPV on its held-out set with 95% intervals
    and the positives and negatives behind them; with the costs of both errors, the threshold of lowest expected
    cost at the site's prevalence. `--set` refuses a cost-chosen threshold the held-out set is too small to
    recommend (fewer than the model's min_positives / min_negatives) unless `--force`."""
    point = terminal.client().get(f"/v1/sites/{site}/operating-point", model=model, threshold=threshold,
                    sensitivity=sensitivity, cost_fp=cost_fp, cost_fn=cost_fn, prevalence=prevalence)
    if set_it and point.get("recommended") is False and not force:
        console.print(f"[red]not set[/]: threshold {point['threshold']:.4f} is not recommended: {point['reason']} "
                      "(--force sets it anyway)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if set_it:
        terminal.client(admin=True).set_threshold(site, point["threshold"])
    terminal.emit({**point, "set": set_it}, as_json, _point_table(site, point, set_it))


def _point_table(site: str, point: dict[str, Any], set_it: bool) -> Table:
    """One row: the threshold's figures with the 95% intervals of sensitivity, specificity and expected cost."""
    figures = ("prevalence", "sensitivity", "specificity", "ppv", "npv", "flagged")
    priced = ("expected_cost", "expected_cost_at_half") if "expected_cost" in point else ()
    spans = ("sensitivity_interval", "specificity_interval") + (("expected_cost_interval",) if priced else ())
    table = Table("site", "version", "threshold", "positives", "negatives",
                  *(k.replace("_", " ") for k in figures + spans + priced), "recommended")
    mark = {True: "[green]yes[/]", False: "[red]no[/]: " + str(point.get("reason")), None: "-"}
    table.add_row(site, f"v{point['version']}", f"{point['threshold']:.4f}" + (" (set)" if set_it else ""),
                  str(point["positives"]), str(point["negatives"]), *(_share(point[k]) for k in figures),
                  *(_span(point[k]) for k in spans), *(_share(point[k]) for k in priced),
                  mark[point.get("recommended")])
    return table

"""`clreg sites report`: whether a model is fit for use at a site, and the held-out figures that say so."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from clreg import terminal
from clreg.terminal import JsonOpt, console


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


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

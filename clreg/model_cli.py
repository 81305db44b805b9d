"""`clreg models create`: register a model, its input spec, task metric and optionally a checkpoint to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from clreg import terminal
from clreg.registry.records import Metric
from clreg.terminal import JsonOpt

models_app = typer.Typer(help="Register models")


@models_app.command("create")
def models_create(name: str, factory: Annotated[str, typer.Option()] = "clreg.learner.models:small_cnn",
                  input: Annotated[str, typer.Option("--input", help="C,H,W")] = "1,16,16",
                  classes: Annotated[int, typer.Option()] = 10,
                  weights: Annotated[Path | None, typer.Option(
                      exists=True, dir_okay=False, readable=True,
                      help="initial weights: a safetensors or torch .pth checkpoint, uploaded first")] = None,
                  normalisation: Annotated[str | None, typer.Option(
                      help="MEAN,STD (one channel) or M1,M2,M3,S1,S2,S3; default with --weights: ImageNet's")] = None,
                  metric: Annotated[Metric | None, typer.Option(
                      help="what the gate, search and readiness judge (default: auroc if binary)")] = None,
                  cost_fp: Annotated[float, typer.Option(help="cost of a false positive (expected_cost)")] = 1.0,
                  cost_fn: Annotated[float, typer.Option(help="cost of a false negative (expected_cost)")] = 1.0,
                  approval: Annotated[Literal["auto", "approval"], typer.Option(
                      help="auto: a version that passes its gates is promoted; approval: approvers decide")] = "auto",
                  approvers: Annotated[int, typer.Option(help="distinct approvals each move needs")] = 1,
                  canary: Annotated[float | None, typer.Option(
                      help="share of a validated site's requests a candidate answers before it may replace "
                           "production (default: no canary)")] = None,
                  as_json: JsonOpt = False) -> None:
    """Register a model: its factory and input spec, and optionally a pretrained checkpoint to start from."""
    spec = tuple(int(v) for v in input.split(","))
    if len(spec) != 3:
        raise typer.BadParameter("--input takes C,H,W, e.g. 1,16,16")
    norm, client = _normalisation(normalisation), terminal.client(admin=True)
    digest = client.upload(weights.read_bytes())["sha256"] if weights is not None else None  # the bytes travel
    created = client.create_model(name, factory, spec, classes, weights=digest, normalisation=norm, metric=metric,
                                 costs={"false_positive": cost_fp, "false_negative": cost_fn},
                                 approval={"mode": approval, "approvers": approvers},
                                 canary={"share": canary} if canary is not None else None)
    terminal.emit(created, as_json)


def _normalisation(text: str | None) -> dict[str, list[float]] | None:
    """--normalisation MEAN,STD or M1..Mc,S1..Sc as the API's {"mean", "std"}."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise typer.BadParameter(f"--normalisation takes numbers, e.g. 0.449,0.226: {e}") from e
    if len(values) < 2 or len(values) % 2:
        raise typer.BadParameter("--normalisation takes the means then the stds, one of each per channel")
    half = len(values) // 2
    return {"mean": values[:half], "std": values[half:]}

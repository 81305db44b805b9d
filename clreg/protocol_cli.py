"""`clreg protocol show|set`: a model's modification protocol and its audited changes (registry/protocol.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from clreg import terminal
from clreg.terminal import JsonOpt, console

protocol_app = typer.Typer(help="A model's modification protocol: show it, change its approval policy (admin)")


@protocol_app.command("show")
def show(model: str, as_json: JsonOpt = False) -> None:
    """Every revision of the model's protocol: who changed what, when and why, and the current rules."""
    answer = terminal.client().get(f"/v1/models/{model}/protocol")
    table = Table("revision", "when", "who", "changed", "reason")
    for p in answer["revisions"]:
        table.add_row(str(p["revision"]), terminal.when(p["at"]), p["who"], ", ".join(p["changed"]), p["reason"])
    terminal.emit(answer, as_json, table)
    if not as_json and answer["current"]:
        current = {k: answer["current"][k] for k in ("metric", "approval", "readiness", "gate", "search", "locked")}
        console.print(json.dumps(current, indent=1), highlight=False, soft_wrap=True)


@protocol_app.command("set")
def set_(model: str, reason: Annotated[str, typer.Option(help="why: kept in the revision")],
         approval: Annotated[Literal["auto", "approval"] | None, typer.Option(help="who moves production")] = None,
         approvers: Annotated[int, typer.Option(help="distinct approvals each move needs")] = 1,
         as_json: JsonOpt = False) -> None:
    """Change the model's approval policy (admin): a new protocol revision, audited."""
    if approval is None:
        raise typer.BadParameter("give --approval auto|approval")
    answer = terminal.client(admin=True).change_protocol(model, reason, approval={"mode": approval,
                                                                                  "approvers": approvers})
    if as_json:
        return terminal.emit(answer, True)
    console.print(f"{model}: protocol revision {answer['revision']} ({', '.join(answer['changed']) or 'no change'})")


def report(model: str, version: Annotated[int, typer.Option("--version", "-v", help="the pack runs from v1 to it")],
           out: Annotated[Path, typer.Option(help="folder for MODEL-vN-evidence.html and .json")] = Path("."),
           as_json: JsonOpt = False) -> None:
    """Write the evidence pack of MODEL from version 1 to --version: one self-contained HTML page laid out along the
    PCCP headings (print it to PDF from a browser) and the JSON it was made from (its sha256 is on the page)."""
    from clreg.serving.evidence import pack_json, render  # the page is rendered here from the one JSON fetched

    found = terminal.client().get(f"/v1/models/{model}/versions/{version}/evidence")
    out.mkdir(parents=True, exist_ok=True)
    page, data = out / f"{model}-v{version}-evidence.html", out / f"{model}-v{version}-evidence.json"
    data.write_bytes(pack_json(found))
    page.write_text(render(found))
    if as_json:
        return terminal.emit({"html": str(page), "json": str(data), "figures": len(found["figures"])}, True)
    console.print(f"evidence pack of {model} v1-v{version}: {page} ({len(found['figures'])} figures, each linked to "
                  f"its record) and {data}")


def note(model: str, version: int, text: Annotated[str, typer.Argument(help="your words in the release note")]) -> None:
    """Set the operator's own text of a version's release note (admin)."""
    written = terminal.client(admin=True).write_note(model, version, text)
    console.print(f"{model} v{version}: note by {written['who']} saved")

"""`clreg protocol show|set`: a model's modification protocol and its audited changes (registry/protocol.py)."""

from __future__ import annotations

import json
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

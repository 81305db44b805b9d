"""`clreg approvers add|list|remove` (admin), `clreg approvals` (read) and `clreg approve|decline` (an approver's
token): who may move an `approval` model's production, and their decisions (registry/approvals.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from clreg import terminal
from clreg.terminal import JsonOpt, console

approvers_app = typer.Typer(help="Approvers of approval models' promotions (admin)")
TokenOpt = Annotated[str, typer.Option(envvar="CLREG_APPROVER_TOKEN", help="your approver token")]
ReasonOpt = Annotated[str, typer.Option(help="why: kept in the request and the alias history")]


@approvers_app.command("add")
def add(name: str, as_json: JsonOpt = False) -> None:
    """Create an approver; its token is printed once and stored only hashed."""
    answer = terminal.client(admin=True).add_approver(name)
    if as_json:
        return terminal.emit(answer, True)
    console.print(f"approver {answer['name']} added; token (shown once): [bold]{answer['token']}[/]")


@approvers_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every approver (tokens are never shown again)."""
    found = terminal.client().get("/v1/approvers")
    table = Table("name", "created")
    for a in found:
        table.add_row(a["name"], terminal.when(a["created_at"]))
    terminal.emit(found, as_json, table)


@approvers_app.command("remove")
def remove(name: str) -> None:
    """Revoke an approver's token (its past decisions stay on record)."""
    terminal.client(admin=True).remove_approver(name)
    console.print(f"approver {name} removed")


def approvals(model: Annotated[str | None, typer.Argument(help="one model (default: all)")] = None,
              every: Annotated[bool, typer.Option("--all", help="decided requests too")] = False,
              as_json: JsonOpt = False) -> None:
    """Approval requests (waiting ones by default): version, who asked and why, each decision."""
    client, status = terminal.client(), "all" if every else "waiting"
    found = client.get(f"/v1/models/{model}/approvals" if model else "/v1/approvals", status=status)
    table = Table("request", "model", "version", "kind", "status", "requester", "reason", "needs", "decisions")
    for r in found:
        said = "; ".join(f"{d['approver']} {d['verdict']}s: {d['reason']}" for d in r["decisions"])
        table.add_row(r["id"], r["model"], f"v{r['version']}", r["kind"], r["status"], r["requester"], r["reason"],
                      str(r["needs"]), said)
    terminal.emit(found, as_json, table)


def approve(model: str, version: int, reason: ReasonOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """Approve the request waiting for a version (an approver's token); the last approval needed promotes it."""
    _decide(model, version, "approve", reason, token, as_json)


def decline(model: str, version: int, reason: ReasonOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """Decline the request waiting for a version (an approver's token); a blessed version is declined for good."""
    _decide(model, version, "decline", reason, token, as_json)


def _decide(model: str, version: int, verdict: str, reason: str, token: str, as_json: bool) -> None:
    if not token:
        raise typer.BadParameter("give your approver token (--token or CLREG_APPROVER_TOKEN)")
    answer = terminal.client().decide(model, version, verdict, reason, token)
    if as_json:
        return terminal.emit(answer, True)
    approvers = ", ".join(answer["approvers"]) or "none"
    console.print(f"{model} v{version}: request {answer['id']} is {answer['status']} (approvals: {approvers}; "
                  f"needs {answer['needs']})")

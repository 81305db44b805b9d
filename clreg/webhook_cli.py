"""`clreg webhooks`: subscribe receivers to events, test them, and see what was delivered or failed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from clreg import terminal
from clreg.terminal import JsonOpt, console

webhooks_app = typer.Typer(help="Signed webhooks: subscribe a URL to clreg's events (admin)")


@webhooks_app.command("add")
def add(url: str,
        event: Annotated[list[str], typer.Option("--event", "-e", help="an event kind, repeatable; '*' for all")],
        model: Annotated[str | None, typer.Option(help="only this model's events")] = None,
        description: str = "", as_json: JsonOpt = False) -> None:
    """Subscribe URL to event kinds; its signing secret is printed once."""
    answer = terminal.client(admin=True).subscribe(url, event, model, description)
    if as_json:
        return terminal.emit(answer, True)
    console.print(f"subscription {answer['id']} -> {answer['url']} for {', '.join(answer['events'])}")
    console.print(f"signing secret (shown once): [bold]{answer['secret']}[/]")


@webhooks_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every subscription (secrets are never shown again)."""
    subs = terminal.client().get("/v1/webhooks")
    table = Table("id", "url", "events", "model", "created")
    for s in subs:
        table.add_row(s["id"], s["url"], ", ".join(s["events"]), s["model"] or "*", terminal.when(s["created_at"]))
    terminal.emit(subs, as_json, table)


@webhooks_app.command("remove")
def remove(sub_id: str) -> None:
    """Delete a subscription; its queued deliveries are recorded as failed."""
    terminal.client(admin=True).unsubscribe(sub_id)
    console.print(f"subscription {sub_id} removed")


@webhooks_app.command("test")
def test(sub_id: str, as_json: JsonOpt = False) -> None:
    """Send a signed `webhook.ping` to the subscription now and show what its receiver answered."""
    answer = terminal.client(admin=True).ping_webhook(sub_id)
    if as_json:
        return terminal.emit(answer, True)
    if not answer["delivered"]:
        console.print(f"[red]not delivered[/]: {answer['error'] or answer['status']}")
        raise typer.Exit(1)
    console.print(f"delivered: the receiver answered {answer['status']}")


@webhooks_app.command("deliveries")
def deliveries(subscription: Annotated[str | None, typer.Option(help="one subscription's")] = None,
               status: Annotated[str | None, typer.Option(help="pending, delivered or failed")] = None,
               limit: int = 50, as_json: JsonOpt = False) -> None:
    """Recent deliveries, newest first, with their attempts and the receiver's last answer."""
    found = terminal.client().get("/v1/webhooks/deliveries", subscription=subscription, status=status, limit=limit)
    table = Table("delivery", "event", "model", "status", "attempts", "last answer", "created")
    for d in found:
        answer = str(d["last_status"] or "") or d["last_error"][:60]
        table.add_row(d["id"], d["event"]["kind"], d["event"]["model"], d["status"], str(d["attempts"]), answer,
                      terminal.when(d["created_at"]))
    terminal.emit(found, as_json, table)

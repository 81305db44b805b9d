"""What every `clreg` command shares: the console, the API client from settings, and JSON-or-table output."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from clreg import embedded
from clreg.client import Client
from clreg.settings import Settings

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")]


def settings() -> Settings:
    return Settings()


def client(admin: bool = False) -> Client:
    """A client with the admin token (admin commands) or the read token: CLREG_TOKEN, else the home's ops token."""
    found = settings()
    url = f"http://{found.serve.host}:{found.serve.port}"
    if admin:
        return Client(url, embedded.admin_token(found.home))
    return Client(url, token=os.environ.get("CLREG_TOKEN") or embedded.secrets(found.home)["ops"])


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        console.print(table)


def when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")

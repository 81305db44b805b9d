"""The `clreg` command: start the stack, run the demo, and talk to a running daemon over HTTP.

The only place that catches broadly: every error becomes a one-line message and an exit code.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import sys
import webbrowser
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import ray
import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
)
from rich.table import Table

from clreg import approval_cli, context, demo, doctor, embedded, faults, protocol_cli, site_cli, status_view, terminal
from clreg.client import ApiError, Client, npz_bytes
from clreg.daemon import Daemon
from clreg.errors import ClregError
from clreg.model_cli import models_app
from clreg.registry.dicom import dicom_study
from clreg.registry.errors import RegistryError, StoreUnavailable
from clreg.registry.store import RedisRegistry
from clreg.serving import deploy
from clreg.settings import Settings
from clreg.webhook_cli import webhooks_app

app = typer.Typer(help="clreg: continual-learning model registry daemon", no_args_is_help=True)
sites_app = typer.Typer(help="Register sites (hospitals) and issue their tokens")
app.add_typer(models_app, name="models")
app.add_typer(sites_app, name="sites")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(approval_cli.approvers_app, name="approvers")
app.add_typer(protocol_cli.protocol_app, name="protocol")
app.command("approvals")(approval_cli.approvals)
app.command("report")(protocol_cli.report)
app.command("note")(protocol_cli.note)
app.command("approve")(approval_cli.approve)
app.command("decline")(approval_cli.decline)
console = terminal.console
JsonOpt = terminal.JsonOpt


_settings, _client, _emit, _when = terminal.settings, terminal.client, terminal.emit, terminal.when


@app.command()
def up() -> None:
    """Start Redis (embedded unless CLREG_REDIS__URL), Ray, Ray Serve and the daemon; Ctrl-C or SIGTERM stops all."""
    settings = _settings()
    _logging()
    faults.arm(settings.faults)
    stack = embedded.start(settings)
    daemon = Daemon(context.build(settings, stack.store, stack.url), settings.daemon, role="up")
    _stop_on_signals(daemon)
    for note in stack.notes:
        console.print(note)
    redis_shown = stack.redis_url.split("@")[-1]  # never print the password
    console.print(f"clreg is up at {stack.url} (Redis {redis_shown}); admin token in "
                  f"{settings.home / 'tokens.json'}. Ctrl-C stops it.")
    try:
        daemon.run()
    finally:
        stack.stop()
        console.print("clreg stopped.")


@app.command("daemon")
def daemon_cmd(name: Annotated[str | None, typer.Option(help="consumer name, one per daemon")] = None) -> None:
    """Run only the pipeline worker, against a running Redis, Ray and Serve (several may share the stream)."""
    settings = _settings()
    if name:
        settings = settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"name": name})})
    _logging()
    faults.arm(settings.faults)
    store = settings.redis.store(embedded.redis_url(settings))
    RedisRegistry(store).ping()  # before Ray starts: a Redis that does not answer is one line, at once
    embedded.start_ray(settings.ray)
    daemon = Daemon(context.build(settings, store, _public_url(settings)), settings.daemon)
    _stop_on_signals(daemon)
    console.print(f"daemon {daemon.me.name} (pid {daemon.me.pid}) follows the ingest stream")
    try:
        daemon.run()
    finally:
        ray.shutdown()
        console.print(f"daemon {daemon.me.name} stopped.")


@app.command("serve")
def serve_cmd() -> None:
    """Deploy or update the Serve applications on the Ray cluster (CLREG_RAY__ADDRESS), then exit."""
    settings = _settings()
    _logging()
    store = settings.redis.store(embedded.redis_url(settings))
    RedisRegistry(store).ping()  # before Ray starts: a Redis that does not answer is one line, at once
    embedded.start_ray(settings.ray)
    try:
        deploy.start(embedded.serving_config(settings, store, embedded.secrets(settings.home)))
    finally:
        ray.shutdown()
    console.print(f"clreg is served at {_public_url(settings)}")


def _public_url(settings: Settings) -> str:
    return f"http://{settings.serve.host}:{settings.serve.port}"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _stop_on_signals(daemon: Daemon) -> None:
    """SIGINT and SIGTERM: take no new entries, cancel a running training (the next start resumes it)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())


@app.command("demo")
def demo_cmd(seed: int = 0) -> None:
    """Run five simulated sites through a fresh local stack and print what happened."""
    logging.basicConfig(level=logging.WARNING)
    ok = demo.run(_settings(), console, seed=seed)
    raise typer.Exit(0 if ok else 1)


@sites_app.command("add")
def sites_add(site: str, threshold: float | None = None,
              models: Annotated[str | None, typer.Option(help="comma-separated models it may push to")] = None,
              batches_per_day: Annotated[int | None, typer.Option(help="quota (default: the server's)")] = None,
              max_bytes: Annotated[int | None, typer.Option(help="quota on bytes stored")] = None,
              replay: Annotated[bool, typer.Option(help="may its samples be replayed in later updates")] = True,
              as_json: JsonOpt = False) -> None:
    """Register a site; its token is printed once and stored only hashed."""
    scope = [m.strip() for m in models.split(",") if m.strip()] if models else None
    answer = _client(admin=True).add_site(site, threshold, scope, batches_per_day, max_bytes, replay)
    if as_json:
        _emit(answer, True)
    else:
        console.print(f"site {answer['site']} added; token (shown once): [bold]{answer['token']}[/]")


@app.command()
def push(site: str, file: Path, model: Annotated[str, typer.Option()] = "digits",
         token: Annotated[str, typer.Option(envvar="CLREG_SITE_TOKEN", help="the site's token")] = "",
         wait: bool = False, locked: Annotated[bool, typer.Option(
             help="a locked test set: never learnt; scored for every version")] = False,
         as_json: JsonOpt = False) -> None:
    """Push a labelled batch for a site: an npz (arrays x and y), or DICOM files with a labels.csv, as a .zip
    or as a folder (its top-level files are zipped on the way)."""
    client = _client()
    client.token = token  # the site's token reads its own batches (--wait)
    if file.is_dir():
        body, kind = _zip_folder(file), "application/zip"
    else:
        kind = "application/zip" if file.suffix.lower() == ".zip" else "application/octet-stream"
        body = file.read_bytes()
    answer = client.push(site, token, body, model, content_type=kind, locked=locked)
    if wait:
        answer = _wait_with_progress(client, answer["batch_id"])
    _emit(answer, as_json)


def _zip_folder(folder: Path) -> bytes:
    """The folder's top-level files (DICOM files and labels.csv) as a zip, in name order."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    return dicom_study(files, None)


EPOCH = re.compile(r"site (?P<site>\S+): epoch (?P<epoch>\d+)/(?P<total>\d+)")


def _wait_with_progress(client: Client, batch_id: str) -> dict[str, Any]:
    """Follow a batch through the pipeline with a progress bar over the training epochs."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("received", total=None)

        def show(state: dict[str, Any]) -> None:
            found = EPOCH.search(state.get("detail") or "")
            if found:
                progress.update(task, description=f"training {found['site']}", completed=int(found["epoch"]),
                                total=int(found["total"]))
            elif state["status"] == "promoted" and not state.get("served"):
                progress.update(task, description="promoted; waiting for every replica to serve it")
            else:
                progress.update(task, description=state["status"].replace("_", " "))

        return client.wait_batch(batch_id, on_state=show)


sites_app.command("list")(site_cli.list_sites)
sites_app.command("report")(site_cli.report)
sites_app.command("threshold")(site_cli.operating_point)
app.command("doctor")(doctor.command)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Models and their production version; daemons with their last heartbeat and the stack's memory; stuck,
    waiting and not learnt batches and sites; abandoned candidates."""
    client = _client()
    models, pipeline = client.get("/v1/models"), client.get("/v1/status")
    if as_json:
        return _emit({"models": models, **pipeline}, True)
    status_view.show(console, models, pipeline)


@app.command()
def versions(name: Annotated[str, typer.Argument(help="the model")] = "digits", history: bool = False,
             as_json: JsonOpt = False,
             status: Annotated[str | None, typer.Option(
                 help="candidate|blessed|awaiting_approval|production|rejected|declined|archived")] = None,
             site: Annotated[str | None, typer.Option(help="versions that have learnt this site")] = None,
             parent: Annotated[int | None, typer.Option(help="versions trained from this version")] = None,
             since: Annotated[datetime | None, typer.Option(help="created at or after (local time)")] = None,
             until: Annotated[datetime | None, typer.Option(help="created before (local time)")] = None) -> None:
    """Versions of a model with status and aliases, optionally filtered; --history lists every production move."""
    client = _client()
    if history:
        data = client.get(f"/v1/models/{name}/aliases")
        table = Table("when", "action", "from", "to", "who", "approvers", "reason")
        for c in data.get("log", data["history"]):  # moves, and the approval steps between them
            table.add_row(_when(c["at"]), c.get("action", "moved"), str(c["from_version"] or "-"), str(c["to_version"]),
                          c["who"], ", ".join(c.get("approvers", [])), c["reason"])
        return _emit(data, as_json, table)
    data = client.get(f"/v1/models/{name}/versions", status=status, site=site, parent=parent,
                      since=since.timestamp() if since else None, until=until.timestamp() if until else None)
    table = Table("version", "status", "aliases", "parent", "sites", "created", "shadow")
    for v in data:
        rec = v["version"]
        table.add_row(str(rec["number"]), v["status"], ",".join(v["aliases"]), str(rec["lineage"]["parent"] or "-"),
                      ",".join(rec["lineage"]["sites"]), _when(rec["created_at"]), _shadow(v.get("shadow")))
    _emit(data, as_json, table)


def _shadow(figures: dict[str, Any] | None) -> str:
    """A version's shadow figures in a cell: agreement with production over the mirrored requests."""
    if not figures:
        return ""
    agreement = "n/a" if figures["agreement"] is None else f"{figures['agreement']:.1%}"
    return f"{agreement} of {figures['requests']} req{' (mirroring)' if figures['active'] else ''}"


@app.command()
def alerts(model: str | None = None, since: float = 0.0, site: str | None = None,
           kind: Annotated[str | None, typer.Option(help="e.g. drift.alert, gate.failed")] = None,
           as_json: JsonOpt = False) -> None:
    """Drift alerts, failed gates and failed updates (site "serving": drift of the inputs Serve saw)."""
    data = _client().get("/v1/alerts", model=model, since=since, site=site, kind=kind)
    table = Table("when", "model", "kind", "site", "detail")
    for e in data:
        d = e["data"]
        table.add_row(_when(e["at"]), e["model"], e["kind"], str(d.get("site", "")),
                      str(d.get("top_features") or d.get("signals") or d.get("reasons") or d.get("error") or ""))
    _emit(data, as_json, table)


@app.command()
def events(model: str = "digits", since: float = 0.0, as_json: JsonOpt = False) -> None:
    """The audit trail of a model."""
    data = _client().get("/v1/events", model=model, since=since)
    table = Table("when", "kind", "data")
    for e in data:
        table.add_row(_when(e["at"]), e["kind"], json.dumps(e["data"], default=str)[:120])
    _emit(data, as_json, table)


@app.command()
def promote(name: str, version: int, reason: str = "promoted by ops", force: bool = False) -> None:
    """Point production at a version (admin); gates are not bypassed unless --force."""
    _moved(name, _client(admin=True).promote(name, version, reason, force))


def _moved(name: str, change: dict[str, Any]) -> None:
    """A move, or (an approval model) the request it became."""
    if "request" in change:
        request = change["request"]
        console.print(f"{name}: production v{change['from_version']} -> v{change['to_version']} waits for "
                      f"{request['needs']} approver(s): request {request['id']} (clreg approvals {name})")
    else:
        console.print(f"{name}: production v{change['from_version']} -> v{change['to_version']}")


@app.command()
def rollback(name: str, reason: str = "rollback by ops") -> None:
    """Move production back to the version that held it before the last move (admin)."""
    client = _client(admin=True)
    history = client.get(f"/v1/models/{name}/aliases")["history"]
    if not history or history[-1]["from_version"] is None:
        raise typer.BadParameter(f"{name} has no earlier production version to roll back to")
    _moved(name, client.promote(name, history[-1]["from_version"], reason))


@app.command()
def withdraw(batch_id: str, reason: str = "withdrawn by ops") -> None:
    """Take a batch that waits (received, drift-checked, or waiting after a rejected update) out for good (admin)."""
    state = _client(admin=True).withdraw(batch_id, reason)
    console.print(f"batch {batch_id[:12]}: {state['status']} ({state['detail']})")


@app.command()
def ui(open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open it in a browser")] = True) -> None:
    """The ops console's address (sign in with the ops or admin token), opened in the default browser."""
    url = f"{_public_url(_settings())}/ui"
    console.print(f"ops console: {url}; sign in with the ops token (reads) or the admin token (acts) from "
                  "$CLREG_HOME/tokens.json")
    if open_browser:
        webbrowser.open(url)


@app.command()
def predict(file: Path, model: str | None = None, site: str | None = None, as_json: JsonOpt = False) -> None:
    """Predict through the Serve endpoint: an npz (array x, uint8 or float32), a DICOM file, a DICOM study
    .zip, or a folder of DICOM files (its top-level files are zipped on the way, as `push` does)."""
    body, kind = _predict_body(file)
    answer, version = _client().predict_bytes(body, kind, model, site)
    if as_json:
        return _emit(answer, True)
    console.print(f"model {answer['model']} v{version}: labels {answer['labels']}")
    if kind != "application/octet-stream":  # DICOM: which file got which label
        for name, label in zip(answer["inputs"], answer["labels"], strict=True):
            console.print(f"  {name if kind == 'application/zip' else file.name}: {label}", markup=False)


def _predict_body(file: Path) -> tuple[bytes, str]:
    """The body and its content type; a DICOM file is known by its DICM magic (PACS exports often have no
    extension); an npz whose x is neither uint8 nor float32 (which the endpoint takes) is sent as float32."""
    if file.is_dir():
        return _zip_folder(file), "application/zip"
    data, zipped = file.read_bytes(), file.suffix.lower() == ".zip"
    if zipped or data[128:132] == b"DICM":
        return data, "application/zip" if zipped else "application/dicom"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            x = npz["x"]
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):  # the endpoint says what is wrong
        return data, "application/octet-stream"
    if x.dtype not in (np.uint8, np.float32):
        data = npz_bytes(x.astype(np.float32))
    return data, "application/octet-stream"

def _setting_errors(e: ValidationError) -> list[str]:
    """One line per invalid setting, named as its environment variable."""
    out = []
    for err in e.errors():
        loc = [str(part) for part in err["loc"]]
        name = "CLREG_" + "__".join(loc).upper() if loc else ""
        message = "no such setting" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        out.append(f"{name}: {message}" if name else message)
    return out


def main() -> None:
    try:
        app()
    except ClregError as e:
        console.print(f"[red]error[/] {e}")
        sys.exit(2)
    except ValidationError as e:  # settings from the environment
        for line in _setting_errors(e):
            console.print(f"error {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except ApiError as e:
        console.print(f"[red]error[/] {e}")
        sys.exit(2)
    except StoreUnavailable as e:  # `clreg up` or `clreg daemon` on a Redis that does not answer
        settings = _settings()
        where = "CLREG_REDIS__URL" if settings.redis.url else "the embedded server"
        console.print(f"[red]error[/] {e} (is the Redis of {where} running?)", soft_wrap=True)
        sys.exit(3)
    except RegistryError as e:
        console.print(f"[red]error[/] {e}")
        sys.exit(2)
    except httpx.HTTPError as e:
        settings = _settings()
        console.print(f"[red]error[/] cannot reach clreg at http://{settings.serve.host}:{settings.serve.port} "
                      f"({e}); is `clreg up` running?")
        sys.exit(3)

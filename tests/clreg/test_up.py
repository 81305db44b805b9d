"""`clreg up` as a user runs it: killed with SIGKILL while a batch trains, started again on the same home
(it reuses the Valkey the killed start left running, never starts a second one on the same data), ready
within 60 s and resumes the batch; then SIGTERM stops everything in order and exits 0 within 30 s."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import _servers_in
from clreg.home import start_time
from clreg.learner.streams import digits_sites, to_uint8
from tests.clreg.processes import Child, up_env

pytestmark = pytest.mark.integration
MODEL = "digits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check, timeout_s: float, what: str):  # noqa: ANN001, ANN202 - a polling helper for this file
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except (httpx.HTTPError, ApiError):
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s")


def _served(client: Client, x) -> int | None:  # noqa: ANN001
    return client.predict(x, MODEL)[1]


def _final(client: Client, batch_id: str) -> dict | None:
    state = client.get(f"/v1/batches/{batch_id}")
    return state if state["status"] in ("promoted", "rejected", "failed") else None


def test_killed_up_restarts_on_its_home_resumes_and_stops_cleanly(tmp_path: Path) -> None:
    home, port = tmp_path / "home", _free_port()
    env = up_env(home, port)
    first = Child(["up"], env, tmp_path / "up-1.log")
    try:
        client = Client(f"http://127.0.0.1:{port}")
        _until(lambda: client.get("/readyz"), 120, f"first start ready:\n{first.output()[-3000:]}")
        client.admin_token = client.token = json.loads((home / "tokens.json").read_text())["admin"]
        base, contrast = digits_sites(seed=3, names=("base", "contrast"))
        client.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
        tokens = {s.name: client.add_site(s.name)["token"] for s in (base, contrast)}
        v1 = client.push("base", tokens["base"], npz_bytes(to_uint8(base.x[:300]), base.y[:300]), MODEL)
        assert client.wait_batch(v1["batch_id"], timeout_s=120)["status"] == "promoted"
        pushed = client.push("contrast", tokens["contrast"], npz_bytes(to_uint8(contrast.x[:300]), contrast.y[:300]),
                             MODEL)
        _until(lambda: client.get(f"/v1/batches/{pushed['batch_id']}")["status"] == "training", 60, "training")
    finally:
        first.kill()
    valkey = json.loads((home / "run" / "valkey.json").read_text())
    assert start_time(valkey["pid"]) == valkey["started"]  # the killed start's Valkey still runs
    ray_procs = json.loads((home / "run" / "ray.json").read_text())["procs"]

    second = Child(["up"], env, tmp_path / "up-2.log")
    try:
        # the killed start's proxy may answer for a moment while Ray tears it down: wait for the new start's word
        _until(lambda: "clreg is up" in second.output() and _served(client, base.x[:1]) == 1, 60,
               f"restart serving v1:\n{second.output()[-3000:]}")
        ready_s = time.monotonic() - second.started
        state = _until(lambda: _final(client, pushed["batch_id"]), 60, "the resumed batch's verdict")
        assert state["status"] == "promoted" and state["version"] >= 2, state  # >2: a retry after forgetting
        assert _servers_in(home / "redis") == [valkey["pid"]]  # reused: one server on the data folder
        assert not [pid for pid, started in ray_procs if start_time(pid) == started]  # orphans stopped
    finally:
        stopping = time.monotonic()
        code = second.terminate(timeout_s=30)
    stop_s = time.monotonic() - stopping
    out = second.output()
    assert f"reusing the Valkey (pid {valkey['pid']})" in out
    assert ready_s < 60 and code == 0 and stop_s < 30, (ready_s, code, stop_s)
    assert _servers_in(home / "redis") == [] and not (home / "run" / "valkey.json").exists()

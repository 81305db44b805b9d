"""Real processes for the crash tests: `clreg daemon` / `clreg up` children, and a prediction client that
counts every request it sends (statuses, exceptions and timeouts alike)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import ray

from clreg.embedded import Stack
from clreg.registry.connection import StoreConfig
from tests import cheap

CLREG = str(Path(sys.executable).parent / "clreg")


def role_env(store: StoreConfig, home: Path, **settings: str) -> dict[str, str]:
    """The environment of a role process on this Redis (key prefix) and home, joining the tests' Ray cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLREG_")}
    env.update({
        "CLREG_HOME": str(home), "CLREG_REDIS__URL": store.url, "CLREG_REDIS__PREFIX": store.prefix,
        "CLREG_RAY__ADDRESS": ray.get_runtime_context().gcs_address, "CLREG_WATCH__ENABLED": "false",
        "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
    })
    env.update({f"CLREG_{k.upper()}": v for k, v in settings.items()})
    return env


def stack_env(stack: Stack, cheap_search: bool = True, **settings: str) -> dict[str, str]:
    """A role process joining the test stack: its Redis, home, Serve port and training settings, and the cheap
    search of the tests (or the product's default search)."""
    defaults = {"serve__port": str(stack.settings.serve.port), "train__epochs": str(stack.settings.train.epochs),
                # the stack's webhook delivery settings: a role's dispatcher must not refuse the tests' receivers
                "webhook": stack.settings.webhook.model_dump_json(), **(cheap.ENV if cheap_search else {})}
    return role_env(stack.store, stack.settings.home, **{**defaults, **settings})


def up_env(home: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a `clreg up` a test starts on its own home and port (cheap search, 25 epochs, no input
    watch, 2 CPUs), with `settings` as further CLREG_ variables (e.g. redis__url=...); nothing of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLREG_", "RAY_ADDRESS"))}
    env.update({"CLREG_HOME": str(home), "CLREG_SERVE__PORT": str(port), "CLREG_TRAIN__EPOCHS": "25",
                "CLREG_WATCH__ENABLED": "false", "CLREG_RAY__NUM_CPUS": "2", "RAY_USAGE_STATS_ENABLED": "0",
                **{f"CLREG_{k.upper()}": v for k, v in settings.items()},
                **{f"CLREG_{k.upper()}": v for k, v in cheap.ENV.items()}})
    return env


class Child:
    """One clreg process, its log in a file; `kill()` sends SIGKILL, as the OOM killer would."""

    live: set[Child] = set()  # started and not yet waited for: `reap()` kills them after each test

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([CLREG, *args], env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        Child.live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._out.close()
            Child.live.discard(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def replica_pids() -> dict[str, int]:
    """pid of the gateway and of each live ModelServer replica (Ray names their processes after them); a killed
    replica stays in /proc as a zombie until Ray reaps it, so zombies are left out."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X"):
            continue
        if title.startswith("ray::ServeReplica:") and ("Gateway" in title or "ModelServer" in title):
            found[f"{title}-{entry.name}"] = int(entry.name)
    return found


def reap() -> int:
    """SIGKILL every child a test left running (it failed before stopping them), so that a leftover daemon
    cannot take the next test's batches; how many there were."""
    left = list(Child.live)
    for child in left:
        child.kill()
    return len(left)


def daemon(stack: Stack, name: str, log: Path, pause_at: str | None = None, signals: Path | None = None,
           cheap_search: bool = True, **settings: str) -> Child:
    """`clreg daemon` joining the stack; with `pause_at`, it stops at that failpoint and waits to be killed."""
    if pause_at:
        settings = {**settings, "faults__pause_at": json.dumps([pause_at]), "faults__signal_dir": str(signals)}
    return Child(["daemon", "--name", name], stack_env(stack, cheap_search, **settings), log)


def wait_for(path: Path, child: Child, timeout_s: float) -> None:
    """Until the failpoint's file appears (the child is paused there); the child's log if it never does."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} not reached (exit {child.proc.poll()}):\n{child.output()[-4000:]}")
        time.sleep(0.05)


class Prober:
    """Clients predicting without pause through /v1/predict; every answer that is not a 200 is a failure,
    exceptions and timeouts included."""

    def __init__(self, url: str, model: str, x: np.ndarray, clients: int = 4, timeout_s: float = 10.0) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.body = {"inputs": np.asarray(x, dtype=float).tolist()}
        self.outcomes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Prober:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                try:
                    r = http.post("/v1/predict", params={"model": self.model}, json=self.body)
                    outcome, version = str(r.status_code), r.headers.get("X-Model-Version", "-")
                except httpx.HTTPError as e:  # connection refused, reset, timeout: a failure like any other
                    outcome, version = type(e).__name__, "-"
                with self._lock:
                    self.outcomes[outcome] += 1
                    self.versions[version] += 1

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failures(self) -> int:
        return self.total - self.outcomes["200"]

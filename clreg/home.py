"""The state folder (CLREG_HOME): its lock, its secrets, and the processes `clreg up` leaves running.

    <home>/                  0700
    <home>/tokens.json       0600  {"admin", "ops" (read-only) tokens, "valkey" password}; refused if others can read it
    <home>/redis/            the embedded Valkey's data (append-only file)
    <home>/run/up.lock       flock held by the running `clreg up` (the kernel drops it when that process dies)
    <home>/run/valkey.json   pid and port of the embedded Valkey, which outlives a SIGKILL of `clreg up`
    <home>/run/ray.json      pid and start time of each local Ray process (two of Ray's agents outlive
                             a SIGKILL of their driver)
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import stat
import time
from pathlib import Path
from typing import IO, Any

from clreg.errors import HomeBusy, InsecureHome

TOKENS = "tokens.json"


def start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), which tells a pid reused from its holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (Linux; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_recorded(procs: list[tuple[int, int]], grace_s: float = 3.0) -> int:
    """Stop the processes still running under a recorded (pid, start time); returns how many there were."""
    alive = [pid for pid, started in procs if start_time(pid) == started]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(start_time(p) is not None for p in alive):
            time.sleep(0.1)
    return len(alive)


class Home:
    """One state folder and what lives in it."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.run = self.path / "run"
        self._lock: IO[str] | None = None

    def create(self) -> None:
        """The folder (0700) and its run/ subfolder; an existing folder of this user is tightened to 0700."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.path.stat()
        if info.st_uid != os.geteuid():
            raise InsecureHome(f"{self.path} belongs to uid {info.st_uid}, not to this user; use your own CLREG_HOME")
        if stat.S_IMODE(info.st_mode) & 0o077:
            self.path.chmod(0o700)
        self.run.mkdir(mode=0o700, exist_ok=True)

    def lock(self) -> None:
        """Hold the home's lock for this process's life; HomeBusy names the `clreg up` that holds it."""
        f = open(self.run / "up.lock", "a+", encoding="ascii")  # noqa: SIM115 - held until the process ends
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise HomeBusy(f"another clreg up (pid {holder}) is running on {self.path}; stop it first") from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def secrets(self) -> dict[str, str]:
        """The admin and ops tokens and the embedded Valkey's password, created on first use (tokens.json, 0600)."""
        path = self.path / TOKENS
        found: dict[str, str] = {}
        if path.exists():
            check_private(path)
            found = json.loads(path.read_text())
        wanted = {**{k: secrets.token_urlsafe(32) for k in ("admin", "ops", "valkey")}, **found}
        if wanted != found:
            self.write_private(path, json.dumps(wanted))
        return wanted

    def write_private(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def record(self, name: str, data: dict[str, Any]) -> None:
        """Remember a running service (run/<name>.json) so that the next start finds it after a crash."""
        self.write_private(self.run / f"{name}.json", json.dumps(data))

    def recorded(self, name: str) -> dict[str, Any] | None:
        path = self.run / f"{name}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def forget(self, name: str) -> None:
        (self.run / f"{name}.json").unlink(missing_ok=True)


def check_private(path: Path) -> None:
    """Refuse a secrets file that another user owns or can read."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise InsecureHome(f"{path} belongs to uid {info.st_uid}, not to this user; it is not used")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InsecureHome(f"{path} has mode {mode:04o}: others may read the tokens in it; run: chmod 600 {path}")

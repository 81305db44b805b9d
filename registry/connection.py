"""The Redis connection: where the registry's metadata lives, the retrying client, the exception boundary."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import redis
from pydantic import BaseModel, ConfigDict
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

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


class StoreConfig(BaseModel):
    """Where the registry's metadata lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "clreg"
    socket_timeout_s: float = 5.0
    # Writes a client is told about (a 202 for a batch, a promotion) wait until the server's append-only
    # file has them on disk (WAITAOF), so a server killed right after loses nothing acknowledged. Skipped
    # where the server keeps no AOF or predates WAITAOF (Redis < 7.2).
    durable_writes: bool = True
    durable_timeout_s: float = 2.0


def connect(cfg: StoreConfig) -> redis.Redis:
    """A client that retries transient connection errors with backoff (redis-py's own Retry)."""
    return redis.Redis.from_url(
        cfg.url,
        decode_responses=True,
        socket_timeout=cfg.socket_timeout_s,
        socket_connect_timeout=cfg.socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )


# Error replies that pass once the server recovers (memory freed, disk writable, failover done); any other error
# reply is a command this code should not have sent (a wrong key type, a bad argument): a bug, not an outage.
TRANSIENT_REPLIES = ("OOM", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS", "BUSY")


def translated(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where redis-py's exceptions become registry errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(f"Redis is unreachable: {e}") from e
        except redis.ResponseError as e:
            if isinstance(e, redis.ReadOnlyError) or str(e).startswith(TRANSIENT_REPLIES):
                raise StoreUnavailable(f"Redis cannot take the command now: {e}") from e
            raise StoreRefused(f"Redis refused the command: {e}") from e

    return wrapper


class Durability:
    """WAITAOF after acknowledged writes, when the server keeps an append-only file and knows the command."""

    def __init__(self, client: redis.Redis, cfg: StoreConfig) -> None:
        self._r = client
        self._cfg = cfg
        self._aof: bool | None = None if cfg.durable_writes else False

    def wait(self) -> None:
        if self._aof is None:
            self._aof = self._probe()
        if not self._aof:
            return
        local, _ = self._r.execute_command("WAITAOF", 1, 0, int(self._cfg.durable_timeout_s * 1000))
        if int(local) < 1:
            raise StoreUnavailable(f"Redis did not write the append-only file within {self._cfg.durable_timeout_s} s")

    def _probe(self) -> bool:
        try:
            if str(self._r.info("persistence").get("aof_enabled", 0)) != "1":
                return False
            self._r.execute_command("WAITAOF", 0, 0, 1)
            return True
        except redis.ResponseError as e:  # an older server, or INFO/WAITAOF renamed away: writes stay async
            log.warning("durable writes off: %s", e)
            return False

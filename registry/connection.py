"""The Redis connection: where the registry's metadata lives, the retrying client, the exception boundary."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis
from pydantic import BaseModel, ConfigDict
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from registry.errors import StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")


class StoreConfig(BaseModel):
    """Where the registry's metadata lives."""

    model_config = ConfigDict(frozen=True)
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "clreg"
    socket_timeout_s: float = 5.0


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


def translated(fn: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where redis-py's exceptions become registry errors."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(f"Redis is unreachable: {e}") from e
        except redis.ResponseError as e:
            raise StoreUnavailable(f"Redis refused the command: {e}") from e

    return wrapper

"""Webhook subscriptions and their deliveries: who asked for which events, what was sent, what failed.

    {p}:webhooks             hash  subscription id -> Subscription JSON (its secret included)
    {p}:webhooks:cursor      hash  model -> id of the last event of that model turned into deliveries
    {p}:webhooks:delivery    hash  delivery id -> Delivery JSON
    {p}:webhooks:log         zset  delivery id -> created_at (listing and trimming)
    {p}:webhooks:due         zset  delivery id -> when it is next tried (or when its claim runs out)
    {p}:webhooks:outcomes    hash  "delivered", "failed" -> deliveries that ended so (counters for /metrics)

An event becomes one delivery per matching subscription, named by subscription and event, so a repeated
fan-out writes nothing new. A dispatcher claims due deliveries by moving their due time past a claim window:
one that dies while sending leaves them due again. Delivery is therefore at least once; receivers dedupe on
the delivery id header.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import urllib.parse
from collections.abc import Sequence
from enum import Enum
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clreg.registry.connection import translated
from clreg.registry.errors import NotFound, TargetRefused
from clreg.registry.events import EVENT_KINDS
from clreg.registry.records import Event, Name, Record, now, parse
from clreg.registry.store import RedisRegistry

SIGNATURE_HEADER = "X-Clreg-Signature"
TIMESTAMP_HEADER = "X-Clreg-Timestamp"
DELIVERY_HEADER = "X-Clreg-Delivery"
EVENT_HEADER = "X-Clreg-Event"
ALL_EVENTS = "*"
HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class WebhookConfig(BaseModel):
    """How webhooks are delivered (prefix CLREG_WEBHOOK__) and where they may go.

    `allow` holds host names (`hooks.example.org`, `*.example.org`) and networks (`10.0.0.0/8`, `127.0.0.1`).
    Empty by default: no subscription is accepted until ops name their receivers, so a subscription cannot be
    used to reach internal services.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    allow: tuple[str, ...] = ()
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=5, ge=0, le=20)  # attempts after the first
    backoff_s: float = Field(default=2.0, ge=0)  # doubled after every failed attempt
    max_backoff_s: float = Field(default=600.0, ge=0)
    interval_s: float = Field(default=1.0, gt=0)  # the daemon's dispatch job
    claim_s: float = Field(default=60.0, gt=0)  # a claimed delivery is due again after this (its sender died)
    keep_deliveries: int = Field(default=10_000, ge=100)

    @field_validator("allow")
    @classmethod
    def _parseable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            _entry(entry)
        return value

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones."""
        return cast(float, min(self.backoff_s * 2 ** max(attempts - 1, 0), self.max_backoff_s))


class DeliveryStatus(str, Enum):
    PENDING = "pending"  # waiting for its first or next try
    DELIVERED = "delivered"
    FAILED = "failed"  # out of retries, or refused for good (a 4xx, a target no longer allowed)


class Subscription(Record):
    """A receiver of events: every kind in `events` (or "*"), of one model or of all (model None)."""

    id: str = Field(pattern=r"^wh-[0-9a-f]{12}$")
    url: str = Field(max_length=2000)
    events: list[str] = Field(min_length=1, max_length=100)
    model: Name | None = None
    secret: str = Field(min_length=16, repr=False)
    description: str = Field(default="", max_length=500)
    created_at: float = Field(default_factory=now)

    @field_validator("events")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - EVENT_KINDS - {ALL_EVENTS})
        if unknown:
            raise ValueError(f"unknown event kinds {unknown}; known: {sorted(EVENT_KINDS)} or '*'")
        return sorted(set(value))

    def wants(self, event: Event) -> bool:
        return ((self.model is None or self.model == event.model) and event.at >= self.created_at
                and (ALL_EVENTS in self.events or event.kind in self.events))

    def public(self) -> dict[str, Any]:
        """The record without its secret: what listings show."""
        return self.model_dump(mode="json", exclude={"secret"})


class Delivery(Record):
    """One event on its way to one subscription."""

    id: str
    subscription: str
    url: str
    event: Event
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_status: int | None = None  # the receiver's last HTTP status, None when it never answered
    last_error: str = ""
    created_at: float = Field(default_factory=now)
    finished_at: float | None = None


def new_subscription(url: str, events: list[str], model: str | None, description: str = "") -> Subscription:
    """A subscription with a fresh id and secret (the secret is shown to its creator once)."""
    return Subscription(id=f"wh-{secrets.token_hex(6)}", url=url, events=events, model=model,
                        secret=f"whsec_{secrets.token_urlsafe(32)}", description=description)


# -- signatures ---------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over "<timestamp>." + body, so a replayed body with a new time fails."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, tolerance_s: float = 300.0,
           at: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the timestamp is within tolerance of its clock."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now() if at is None else at) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def signed_headers(secret: str, body: bytes, delivery_id: str, kind: str, at: float | None = None) -> dict[str, str]:
    timestamp = int(now() if at is None else at)
    return {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body), DELIVERY_HEADER: delivery_id, EVENT_HEADER: kind}


# -- the allow-list -----------------------------------------------------------------------------------
def _entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """A network, or a lower-case host name (optionally `*.` + a domain)."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        name = entry.lower().rstrip(".")
        if not HOST_PATTERN.fullmatch(name):
            raise ValueError(f"allow-list entry {entry!r} is neither a network nor a host name") from None
        return name


def check_target(url: str, allow: Sequence[str]) -> None:
    """Refuse a url unless it is http(s) and its host is listed by name, or every address it resolves to is
    inside a listed network."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = (parts.hostname or "").lower().rstrip("."), parts.port  # a port that is not a number: refused
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host, parts = "", urllib.parse.SplitResult("", "", "", "", "")
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused(f"webhook url {url[:200]!r} must be http:// or https:// with a host (and a numeric port)")
    entries = [_entry(e) for e in allow]
    names = [e for e in entries if isinstance(e, str)]
    if any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in names):
        return
    networks = [e for e in entries if not isinstance(e, str)]
    addresses = _addresses(host)
    if addresses and all(any(a in net for net in networks) for a in addresses):
        return
    listed = ", ".join(allow) or "nothing"
    raise TargetRefused(f"webhook host {host!r} is not allowed (CLREG_WEBHOOK__ALLOW lists {listed}); "
                        "add its name or network to the allow-list")


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):  # unresolvable or not a name (UnicodeError is a ValueError): nothing to allow
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


# -- the store ------------------------------------------------------------------------------------------
# Take up to ARGV[3] deliveries due at ARGV[1] and make them due again at ARGV[2]: one dispatcher each.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""
# Write each new delivery (ARGV: id, json, created_at triples) once, queue it, and move the model's cursor.
_FAN_OUT = """
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i])
    redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
  end
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
return 1
"""


class WebhookStore:
    """Subscriptions, the per-model fan-out cursor and the delivery queue."""

    def __init__(self, registry: RedisRegistry) -> None:
        self._reg = registry
        self.r = registry.r
        self._claim = self.r.register_script(_CLAIM)
        self._fan_out = self.r.register_script(_FAN_OUT)
        self._subs = registry.key("webhooks")
        self._cursor = registry.key("webhooks", "cursor")
        self._deliveries = registry.key("webhooks", "delivery")
        self._log = registry.key("webhooks", "log")
        self._due = registry.key("webhooks", "due")
        self._outcomes = registry.key("webhooks", "outcomes")

    @translated
    def add(self, sub: Subscription) -> Subscription:
        self.r.hset(self._subs, sub.id, sub.model_dump_json())
        return sub

    @translated
    def get(self, sub_id: str) -> Subscription:
        raw = self.r.hget(self._subs, sub_id)
        if raw is None:
            raise NotFound(f"webhook subscription {sub_id!r} does not exist")
        return parse(Subscription, raw)

    @translated
    def subscriptions(self) -> list[Subscription]:
        subs = [parse(Subscription, raw) for raw in self.r.hvals(self._subs)]
        return sorted(subs, key=lambda s: s.created_at)

    @translated
    def remove(self, sub_id: str) -> None:
        if not self.r.hdel(self._subs, sub_id):
            raise NotFound(f"webhook subscription {sub_id!r} does not exist")

    @translated
    def cursor(self, model: str) -> str | None:
        value = self.r.hget(self._cursor, model)
        return None if value is None else str(value)

    @translated
    def fan_out(self, model: str, cursor: str, deliveries: list[Delivery]) -> None:
        """Queue the deliveries of a model's events up to `cursor` (a stream id), all or nothing."""
        args: list[str | float] = [model, cursor]
        for d in deliveries:
            args += [d.id, d.model_dump_json(), d.created_at]
        self._fan_out(keys=[self._deliveries, self._log, self._due, self._cursor], args=args)

    @translated
    def claim(self, limit: int, claim_s: float, at: float | None = None) -> list[Delivery]:
        """Deliveries due now, each hidden from other dispatchers for `claim_s`."""
        at = now() if at is None else at
        ids = self._claim(keys=[self._due], args=[at, at + claim_s, limit])
        if not ids:
            return []
        raws = self.r.hmget(self._deliveries, ids)
        return [parse(Delivery, raw) for raw in raws if raw is not None]

    @translated
    def save(self, delivery: Delivery, due_at: float | None) -> None:
        """Record an attempt's outcome; `due_at` None takes the delivery off the queue (it is final)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self._deliveries, delivery.id, delivery.model_dump_json())
            if due_at is None:
                pipe.zrem(self._due, delivery.id)
                pipe.hincrby(self._outcomes, delivery.status.value, 1)
            else:
                pipe.zadd(self._due, {delivery.id: due_at})
            pipe.execute()

    @translated
    def deliveries(self, subscription: str | None = None, status: DeliveryStatus | None = None,
                   limit: int = 100) -> list[Delivery]:
        """The newest deliveries first, narrowed by subscription and status."""
        ids = self.r.zrevrange(self._log, 0, -1)
        out: list[Delivery] = []
        for start in range(0, len(ids), 500):
            for raw in self.r.hmget(self._deliveries, ids[start:start + 500]):
                if raw is None:
                    continue
                d = parse(Delivery, raw)
                if (subscription is None or d.subscription == subscription) and (status is None or d.status == status):
                    out.append(d)
                    if len(out) >= limit:
                        return out
        return out

    @translated
    def outcomes(self) -> dict[str, int]:
        """Deliveries ever finished, by outcome, and those queued now (for /metrics)."""
        ended = {k: int(v) for k, v in self.r.hgetall(self._outcomes).items()}
        return {"delivered": ended.get("delivered", 0), "failed": ended.get("failed", 0),
                "pending": int(self.r.zcard(self._due))}

    @translated
    def trim(self, keep: int) -> int:
        """Forget the oldest deliveries beyond `keep` (final ones only: a pending one stays queued)."""
        excess = int(self.r.zcard(self._log)) - keep
        if excess <= 0:
            return 0
        oldest = self.r.zrange(self._log, 0, excess - 1)
        queued = self.r.zmscore(self._due, oldest)
        old = [i for i, score in zip(oldest, queued, strict=True) if score is None]
        if old:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.zrem(self._log, *old)
                pipe.hdel(self._deliveries, *old)
                pipe.execute()
        return len(old)

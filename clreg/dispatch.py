"""The webhook dispatcher: new events become deliveries, due deliveries are sent, failures retried with backoff.

A daemon job (every CLREG_WEBHOOK__INTERVAL_S), never on a request's path: a slow receiver delays nothing
but its own deliveries. Each model's events are read from its audit stream after a cursor kept in Redis,
so a restarted daemon continues where it stopped and two daemons queue each delivery once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from clreg.registry.errors import RegistryError
from clreg.registry.events import EventLog
from clreg.registry.records import Event, now
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import Delivery, DeliveryStatus, Subscription, WebhookConfig, WebhookStore
from clreg.serving.webhooks import Attempt, send

log = logging.getLogger(__name__)
PER_TICK = 32  # deliveries claimed per run; with SENDERS parallel posts a run stays well inside claim_s
SENDERS = 8


def body(delivery: Delivery) -> dict[str, Any]:
    """What a receiver gets: the delivery and subscription ids and the event as clreg recorded it."""
    return {"delivery": delivery.id, "subscription": delivery.subscription,
            "event": delivery.event.model_dump(mode="json", exclude={"schema_version"})}


def start_id(at: float) -> str:
    """A stream id just before `at`: a model's first fan-out starts at its earliest subscription."""
    return f"{max(int(at * 1000) - 1, 0)}-0"


class Dispatcher:
    def __init__(self, registry: RedisRegistry, cfg: WebhookConfig) -> None:
        self.registry = registry
        self.events = EventLog(registry)
        self.store = WebhookStore(registry)
        self.cfg = cfg

    def run(self) -> None:
        """The scheduled job: fan out, deliver, trim. Redis away: the next run tries again."""
        try:
            self.fan_out()
            self.deliver()
            self.store.trim(self.cfg.keep_deliveries)
        except RegistryError as e:
            log.warning("webhook dispatch skipped: %s", e)

    def fan_out(self) -> int:
        """Queue one delivery per new event and subscription that wants it; the number queued."""
        subs = self.store.subscriptions()
        queued = 0
        for model in self.registry.list_models() if subs else []:
            wanted = [s for s in subs if s.model in (None, model)]
            if wanted:
                queued += self._fan_out_model(model, wanted)
        return queued

    def _fan_out_model(self, model: str, subs: list[Subscription]) -> int:
        cursor = self.store.cursor(model) or start_id(min(s.created_at for s in subs))
        queued = 0
        while events := self.events.after(model, cursor):
            deliveries = [_delivery(s, e) for e in events for s in subs if s.wants(e)]
            cursor = events[-1].id
            self.store.fan_out(model, cursor, deliveries)
            queued += len(deliveries)
        return queued

    def deliver(self, at: float | None = None) -> int:
        """Send what is due at `at` (default now), in parallel; the number sent, successful or not."""
        due = self.store.claim(PER_TICK, self.cfg.claim_s, at=at)
        if not due:
            return 0
        subs = {s.id: s for s in self.store.subscriptions()}
        with httpx.Client(timeout=self.cfg.timeout_s) as client, ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(lambda d: self._one(client, subs.get(d.subscription), d), due))
        return len(due)

    def _one(self, client: httpx.Client, sub: Subscription | None, delivery: Delivery) -> None:
        if sub is None:
            attempt = Attempt(None, "the subscription was removed", refused=True)
        else:
            attempt = send(client, sub, delivery.id, delivery.event.kind, body(delivery), self.cfg.allow)
        self._record(delivery, attempt)

    def _record(self, delivery: Delivery, attempt: Attempt) -> None:
        attempts = delivery.attempts + 1
        again = not attempt.ok and attempt.retryable and attempts <= self.cfg.retries
        status = DeliveryStatus.DELIVERED if attempt.ok else DeliveryStatus.PENDING if again else DeliveryStatus.FAILED
        done = delivery.model_copy(update={"attempts": attempts, "status": status, "last_status": attempt.status,
                                           "last_error": attempt.error,
                                           "finished_at": None if again else now()})
        self.store.save(done, now() + self.cfg.backoff(attempts) if again else None)
        if status is DeliveryStatus.FAILED:
            log.warning("webhook delivery %s to %s failed after %d attempts: %s", delivery.id, delivery.url,
                        attempts, attempt.error)


def _delivery(sub: Subscription, event: Event) -> Delivery:
    return Delivery(id=f"{sub.id}.{event.id}", subscription=sub.id, url=sub.url, event=event)

"""Webhook subscriptions over HTTP, and the signed POST that both a test ping and the daemon's dispatcher send.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.

Managing subscriptions needs the admin token; listing them and their deliveries needs the ops token. A
subscription's secret is in the answer to its creation only.
"""

import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from clreg.registry.errors import TargetRefused
from clreg.registry.records import Name, now
from clreg.registry.webhooks import (
    DeliveryStatus,
    Subscription,
    check_target,
    new_subscription,
    signed_headers,
)
from clreg.serving.services import Admin, Reader, Svc

SubscriptionId = Annotated[str, Path(pattern=r"^wh-[0-9a-f]{12}$")]


@dataclass(frozen=True)
class Attempt:
    """One POST's outcome: the receiver's status (None when it never answered) and what went wrong."""

    status: int | None
    error: str = ""
    refused: bool = False  # the target is outside the allow-list: nothing was sent

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Network errors, server errors and rate limits may pass later; other answers, and a refused target,
        will not (a redirect is not followed: it could lead outside the allow-list)."""
        if self.status is None:
            return not self.refused
        return self.status >= 500 or self.status in (408, 429)


def send(client: httpx.Client, sub: Subscription, delivery_id: str, kind: str, payload: dict[str, Any],
         allow: tuple[str, ...]) -> Attempt:
    """POST `payload` to the subscription, signed with its secret; the target is checked again at every send
    (the allow-list may have shrunk, a name may resolve elsewhere now)."""
    try:
        check_target(sub.url, allow)
    except TargetRefused as e:
        return Attempt(None, str(e), refused=True)
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    try:
        response = client.post(sub.url, content=body, headers=signed_headers(sub.secret, body, delivery_id, kind))
    except httpx.HTTPError as e:
        return Attempt(None, f"{type(e).__name__}: {e}"[:500])
    return Attempt(response.status_code, "" if response.is_success else f"answered {response.status_code}")


class NewSubscription(BaseModel):
    url: str = Field(max_length=2000)
    events: list[str] = Field(min_length=1, max_length=100, description="event kinds, or ['*'] for all")
    model: Name | None = Field(default=None, description="one model's events; none: every model's")
    description: str = Field(default="", max_length=500)


router = APIRouter(prefix="/v1/webhooks")


@router.post("", status_code=201)
def subscribe(body: NewSubscription, svc: Svc, _: Admin) -> dict[str, Any]:
    """Subscribe a url to event kinds; the answer holds the signing secret, shown this once."""
    check_target(body.url, svc.cfg.webhooks.allow)
    sub = svc.webhooks.add(new_subscription(body.url, body.events, body.model, body.description))
    return {**sub.public(), "secret": sub.secret}


@router.get("")
def subscriptions(svc: Svc, _: Reader) -> list[dict[str, Any]]:
    return [s.public() for s in svc.webhooks.subscriptions()]


@router.get("/deliveries")  # before /{sub_id}: "deliveries" is not an id
def deliveries(svc: Svc, _: Reader, subscription: Annotated[str | None, Query(pattern=r"^wh-[0-9a-f]{12}$")] = None,
               status: DeliveryStatus | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
    """Newest first: each delivery's event, attempts, last answer and final state."""
    found = svc.webhooks.deliveries(subscription=subscription, status=status, limit=limit)
    return [d.model_dump(mode="json") for d in found]


@router.get("/{sub_id}")
def subscription(sub_id: SubscriptionId, svc: Svc, _: Reader) -> dict[str, Any]:
    return svc.webhooks.get(sub_id).public()


@router.delete("/{sub_id}")
def unsubscribe(sub_id: SubscriptionId, svc: Svc, _: Admin) -> dict[str, Any]:
    svc.webhooks.remove(sub_id)
    return {"deleted": sub_id}


@router.post("/{sub_id}/test")
def ping(sub_id: SubscriptionId, svc: Svc, _: Admin) -> dict[str, Any]:
    """Send a signed `webhook.ping` now, once, and say what the receiver answered."""
    sub = svc.webhooks.get(sub_id)
    delivery_id = f"ping-{secrets.token_hex(8)}"
    payload = {"delivery": delivery_id, "subscription": sub.id,
               "event": {"id": "", "model": sub.model, "kind": "webhook.ping", "at": now(), "data": {}}}
    with httpx.Client(timeout=svc.cfg.webhooks.timeout_s) as client:
        attempt = send(client, sub, delivery_id, "webhook.ping", payload, svc.cfg.webhooks.allow)
    return {"delivered": attempt.ok, "status": attempt.status, "error": attempt.error}

"""POST /v1/batches/{batch_id}/withdraw (admin): ops take a batch out before it is learnt (registry.withdrawal).

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the route.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from clreg.registry.events import EventLog
from clreg.registry.records import BatchId
from clreg.registry.store import RedisRegistry
from clreg.registry.withdrawal import withdraw


class Withdrawal(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def router(reg: RedisRegistry, events: EventLog, admin: Callable[..., str]) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/batches/{batch_id}/withdraw")
    def withdraw_batch(batch_id: BatchId, body: Withdrawal, who: Annotated[str, Depends(admin)]) -> dict:
        """Reject a batch that waits (received, drift-checked, or waiting after a rejected update) for good."""
        state = withdraw(reg, events, batch_id, who=who, reason=body.reason)
        return {"batch_id": batch_id, **state.model_dump()}

    return routes

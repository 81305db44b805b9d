"""POST /v1/batches/{batch_id}/withdraw (admin): ops take a batch out before it is learnt (registry.withdrawal).

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the route.
"""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from clreg.registry.records import BatchId
from clreg.registry.withdrawal import withdraw
from clreg.serving.services import Admin, Svc

router = APIRouter()


class Withdrawal(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/v1/batches/{batch_id}/withdraw")
def withdraw_batch(batch_id: BatchId, body: Withdrawal, svc: Svc, who: Admin) -> dict[str, Any]:
    """Reject a batch that waits (received, drift-checked, or waiting after a rejected update) for good."""
    state = withdraw(svc.registry, svc.events, batch_id, who=who, reason=body.reason)
    return {"batch_id": batch_id, **state.model_dump()}

"""Checkpoints through the artifact store: `POST /v1/artifacts` keeps uploaded bytes by sha256, and a model
registered with `"weights": <sha256>` starts from that checkpoint adapted to its network.

Workers and replicas never read a local path: the uploaded file and the adapted state dict both live in the
artifact store, named by their digests (Model.weights_source, Model.weights).

No `from __future__ import annotations`: FastAPI reads the routes' dependency annotations at import.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from starlette.concurrency import run_in_threadpool
from torch import nn

from clreg.learner.checkpoints import IMAGENET, adapt_checkpoint, load_checkpoint
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.errors import NotFound
from clreg.registry.records import Normalisation
from clreg.serving.auth import Tokens
from clreg.serving.errors import UnsupportedMedia
from clreg.serving.guard import read_body

KIND = "application/octet-stream"
HEAD_SEED = 0  # the fresh head of an adapted checkpoint: the same upload gives the same initial weights

router = APIRouter()


@dataclass(frozen=True)
class Uploads:
    """What the upload route needs: the artifact store, the admin token and the size limit."""

    artifacts: ArtifactStore
    tokens: Tokens
    max_bytes: int


def install(app: FastAPI, uploads: Uploads) -> None:
    """Serve the upload route on `app` with these stores (kept on app.state, where the route finds them)."""
    app.state.uploads = uploads
    app.include_router(router)


def _admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> Uploads:
    uploads: Uploads = request.app.state.uploads
    uploads.tokens.require_admin(authorization)
    return uploads


@router.post("/v1/artifacts", status_code=201)
async def upload(request: Request, uploads: Annotated[Uploads, Depends(_admin)]) -> dict[str, Any]:
    """Store a checkpoint (application/octet-stream, up to max_weights_bytes) for `POST /v1/models` to name by
    its sha256; the same bytes again answer the same digest."""
    if request.headers.get("content-type", "").split(";")[0].strip() != KIND:
        raise UnsupportedMedia(f"send the checkpoint's bytes as {KIND}")
    body = await read_body(request.headers.get("content-length"), request.stream(), uploads.max_bytes)
    digest = await run_in_threadpool(uploads.artifacts.put, body)
    return {"sha256": digest, "bytes": len(body)}


def default_normalisation(channels: int) -> Normalisation | None:
    """ImageNet's normalisation for a pretrained checkpoint of 1 (grey) or 3 channels; None for any other."""
    known = IMAGENET.get(channels)
    return Normalisation(mean=list(known[0]), std=list(known[1])) if known else None


def initial_weights(artifacts: ArtifactStore, net: nn.Module, source: str) -> dict[str, str]:
    """An uploaded checkpoint adapted to the network and stored: {"weights": adapted, "weights_source": source}.

    Raises:
        NotFound: no artifact has the digest `source` (upload it first).
        WeightsError: the checkpoint is unreadable or does not fit the network (the keys are named).
    """
    if not artifacts.exists(source):
        raise NotFound(f"no uploaded checkpoint has sha256 {source}: upload it with POST /v1/artifacts first")
    adapted = adapt_checkpoint(net, load_checkpoint(artifacts.get(source)), HEAD_SEED)
    return {"weights": artifacts.put(adapted), "weights_source": source}

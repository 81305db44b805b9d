"""One mapping from exceptions to JSON error answers, shared by both Serve applications."""

from __future__ import annotations

from starlette.responses import JSONResponse

from registry.errors import (
    ArtifactCorrupt,
    BatchMismatch,
    Conflict,
    MalformedBatch,
    NotFound,
    RegistryError,
    StoreUnavailable,
    UnreadableRecord,
)
from serving.errors import ServingError

RETRY_AFTER_S = 2
_REGISTRY_STATUS: list[tuple[type[RegistryError], int, str]] = [
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (MalformedBatch, 400, "malformed_batch"),
    (BatchMismatch, 422, "batch_mismatch"),
    (ArtifactCorrupt, 500, "artifact_corrupt"),
    (StoreUnavailable, 503, "store_unavailable"),
    (UnreadableRecord, 500, "unreadable_record"),
]


def error_response(exc: Exception) -> JSONResponse:
    """`{"error": code, "detail": message}` with the status that fits the exception."""
    status, code = 500, "internal"
    if isinstance(exc, ServingError):
        status, code = exc.status, exc.code
    elif isinstance(exc, RegistryError):
        for cls, s, c in _REGISTRY_STATUS:
            if isinstance(exc, cls):
                status, code = s, c
                break
    elif isinstance(exc, ValueError):  # pydantic and name-pattern validation
        status, code = 422, "invalid"
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None  # worth retrying shortly
    return JSONResponse({"error": code, "detail": str(exc)}, status_code=status, headers=headers)

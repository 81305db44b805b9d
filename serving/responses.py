"""One mapping from exceptions to JSON error answers, shared by both Serve applications.

Expected failures (a ServingError, a RegistryError, a failed validation, a model factory that does not
build) become their documented 4xx or 503. Anything else is a bug: it is logged with its stack and a
request id, and the client gets `{"error": "internal", "request_id": ...}` with status 500, never a page.
"""

from __future__ import annotations

import gzip
import logging
import uuid

from starlette.responses import HTMLResponse, JSONResponse, Response

from clreg.learner.errors import LearnerError
from clreg.registry.errors import (
    ArtifactCorrupt,
    BatchMismatch,
    Conflict,
    MalformedBatch,
    NotFound,
    NotPermitted,
    RegistryError,
    StoreUnavailable,
    TargetRefused,
    TooLarge,
    UnreadableRecord,
)
from clreg.serving.errors import ServingError, TooManyRequests

log = logging.getLogger(__name__)
RETRY_AFTER_S = 2
_REGISTRY_STATUS: list[tuple[type[RegistryError], int, str]] = [
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (NotPermitted, 403, "forbidden"),
    (MalformedBatch, 400, "malformed_batch"),
    (BatchMismatch, 422, "batch_mismatch"),
    (TooLarge, 413, "payload_too_large"),
    (TargetRefused, 422, "target_not_allowed"),
    (ArtifactCorrupt, 500, "artifact_corrupt"),
    (StoreUnavailable, 503, "store_unavailable"),
    (UnreadableRecord, 500, "unreadable_record"),
]


def error_response(exc: Exception) -> JSONResponse:
    """`{"error": code, "detail": message}` with the status that fits the exception."""
    status, code, detail = _classify(exc)
    if code == "internal":
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s failed", request_id, exc_info=exc)
        return JSONResponse({"error": code, "detail": "an internal error; its stack is in the server log",
                             "request_id": request_id}, status_code=500)
    headers = None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif status == 503:  # worth retrying shortly
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _classify(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ServingError):
        return exc.status, exc.code, str(exc)
    if isinstance(exc, RegistryError):
        for cls, status, code in _REGISTRY_STATUS:
            if isinstance(exc, cls):
                return status, code, str(exc)
        return 500, "internal", str(exc)
    if isinstance(exc, LearnerError):  # e.g. a model factory that does not build
        return 422, "unprocessable", str(exc)
    if isinstance(exc, ValueError):  # pydantic and name-pattern validation
        return 422, "invalid", str(exc)
    return 500, "internal", str(exc)


GZIP_MAGIC = b"\x1f\x8b"


def stored_html(stored: bytes, accept_encoding: str) -> Response:
    """A stored report page: gzip bytes go out as they are where the client takes gzip (pages before gzip: plain)."""
    if stored[:2] != GZIP_MAGIC:
        return HTMLResponse(stored.decode())
    if "gzip" in accept_encoding.lower():
        return Response(stored, media_type="text/html; charset=utf-8", headers={"Content-Encoding": "gzip"})
    return HTMLResponse(gzip.decompress(stored).decode())

"""Serving errors, each carrying the HTTP status and error code clients see.

ServingError
 ├── BadRequest        400 malformed body or query
 ├── Unauthorized      401 no token, or a token nobody issued
 ├── Forbidden         403 a valid token used outside its scope
 ├── PayloadTooLarge   413 body over the configured limit
 ├── UnsupportedMedia  415 a content type the route does not take
 ├── Unprocessable     422 a well-formed request the target cannot answer (e.g. a binary-only figure)
 └── NotReady          503 no production version loaded yet
"""

from __future__ import annotations


class ServingError(Exception):
    status = 500
    code = "internal"


class BadRequest(ServingError):
    status = 400
    code = "bad_request"


class Unauthorized(ServingError):
    status = 401
    code = "unauthorized"


class Forbidden(ServingError):
    status = 403
    code = "forbidden"


class PayloadTooLarge(ServingError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServingError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ServingError):
    status = 422
    code = "unprocessable"


class NotReady(ServingError):
    status = 503
    code = "not_ready"

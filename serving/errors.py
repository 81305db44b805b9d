"""Serving errors, each carrying the HTTP status and error code clients see.

ServingError
 ├── BadRequest        400 malformed body or query
 │    └── BadHost      400 a Host header outside the allow-list (DNS rebinding)
 ├── Unauthorized      401 no token, or a token nobody issued
 ├── Forbidden         403 a valid token used outside its scope
 ├── ModelNotFound     404 no such model (on the predict route; the gateway uses the registry's NotFound)
 ├── MethodNotAllowed  405 a method the route does not take
 ├── LengthRequired    411 a body without Content-Length (chunked)
 ├── PayloadTooLarge   413 body over the configured limit
 ├── UnsupportedMedia  415 a content type the route does not take
 ├── Unprocessable     422 a well-formed request the target cannot answer (e.g. a binary-only figure)
 ├── TooManyRequests   429 a site's quota is used up (with Retry-After)
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


class BadHost(BadRequest):
    code = "bad_host"


class Forbidden(ServingError):
    status = 403
    code = "forbidden"


class ModelNotFound(ServingError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ServingError):
    status = 405
    code = "method_not_allowed"


class LengthRequired(ServingError):
    status = 411
    code = "length_required"


class SiteNotValidated(ServingError):
    """The model's readiness policy is `refuse` and the request is for a site the version is not validated at."""

    status = 409
    code = "site_not_validated"


class PayloadTooLarge(ServingError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServingError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ServingError):
    status = 422
    code = "unprocessable"


class TooManyRequests(ServingError):
    status = 429
    code = "too_many_requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class NotReady(ServingError):
    status = 503
    code = "not_ready"

"""The gateway's edge: the Host allow-list, security headers, and one error boundary that turns every failure
into the documented JSON error (a routed 404 and a 405 included, and a bug into a 500 with a request id)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from clreg.learner.errors import LearnerError
from clreg.registry.errors import RegistryError
from clreg.serving.errors import BadHost, ServingError
from clreg.serving.guard import check_host
from clreg.serving.responses import error_response

# Evidently's report pages inline their scripts and styles; nothing may be fetched from elsewhere.
HTML_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
               "font-src data:; frame-ancestors 'none'")
# The console's own pages also fetch fragments of themselves and post forms to themselves.
CONSOLE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
                  "font-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'")
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


def install(app: FastAPI, allowed_hosts: tuple[str, ...]) -> None:
    """Register the error handlers and the Host / header middleware on `app`."""

    @app.middleware("http")
    async def edge(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            check_host(request.headers.get("host"), allowed_hosts)
        except BadHost as e:
            response: Response = error_response(e)
        else:
            response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.headers.get("content-type", "").startswith("text/html"):
            console = request.url.path.startswith("/ui")
            response.headers["Content-Security-Policy"] = CONSOLE_POLICY if console else HTML_POLICY
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid", "detail": detail[:2000]}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": HTTP_CODES.get(exc.status_code, "http_error"), "detail": str(exc.detail)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def _known(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    # Expected failures are answered here; only a bug reaches the last-resort handler below (which Starlette
    # runs outermost, and then re-raises so that the server logs the stack).
    for kind in (ServingError, RegistryError, LearnerError, ValueError):
        app.add_exception_handler(kind, _known)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

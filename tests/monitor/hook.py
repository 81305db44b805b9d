"""A real local HTTP server that receives webhook POSTs: scripted statuses, every JSON body kept.

Given a secret it checks every request's signature the way the README's receiver does, answers 401 to a
request whose signature does not match, and keeps what it refused apart from what it accepted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clreg.registry.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class Hook(ThreadingHTTPServer):
    """A webhook receiver that answers with scripted statuses (then 200) and keeps every body."""

    statuses: list[int]
    bodies: list[dict]  # accepted (signature fine, or no secret set), whatever status was then scripted
    headers: list[dict[str, str]]
    raw: list[bytes]  # the accepted bodies as they arrived
    refused: list[bytes]  # bodies whose signature did not verify
    secret: str | None


class Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        hook = self.server
        if hook.secret is not None and not verify(hook.secret, self.headers.get(TIMESTAMP_HEADER, ""),
                                                  self.headers.get(SIGNATURE_HEADER, ""), raw):
            hook.refused.append(raw)
            status = 401
        else:
            hook.bodies.append(json.loads(raw))
            hook.raw.append(raw)
            hook.headers.append(dict(self.headers.items()))
            status = hook.statuses.pop(0) if hook.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(("127.0.0.1", 0), Handler)
    server.statuses, server.bodies, server.headers, server.raw, server.refused = [], [], [], [], []
    server.secret = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: Hook) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/alerts"

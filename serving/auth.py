"""Who may call what: bearer tokens checked against the sha256 digests the gateway was given.

- admin: everything (register models and sites, move aliases, set thresholds);
- ops: read every route (read-only monitoring, `clreg status`, Prometheus);
- a site's token: push batches for that site (to the models it was registered for) and read its batches.
"""

from __future__ import annotations

import hmac

from clreg.registry.batches import token_sha256
from clreg.serving.errors import Forbidden, Unauthorized


def bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def matches(token: str, digest: str) -> bool:
    return bool(digest) and hmac.compare_digest(token_sha256(token), digest)


class Tokens:
    """The admin and ops token digests of one deployment."""

    def __init__(self, admin_sha256: str, ops_sha256: str) -> None:
        self.admin = admin_sha256
        self.ops = ops_sha256

    def role(self, authorization: str | None) -> str | None:
        """"admin", "ops", or None for a token that is neither (it may still be a site's)."""
        token = bearer(authorization)
        if matches(token, self.admin):
            return "admin"
        if matches(token, self.ops):
            return "ops"
        return None

    def require_admin(self, authorization: str | None) -> str:
        if self.role(authorization) != "admin":
            raise Forbidden("this action needs the admin token")
        return "admin"

    def require_reader(self, authorization: str | None) -> str:
        role = self.role(authorization)
        if role is None:
            raise Unauthorized("reading this route needs the ops or the admin token")
        return role

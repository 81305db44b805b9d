"""Who may call what: bearer tokens checked against the sha256 digests the gateway was given.

- admin: everything (register models and sites, move aliases, set thresholds);
- ops: read every route (read-only monitoring, `clreg status`, Prometheus);
- an approver's token (registry/approvers.py): read every route, approve or decline moves of an `approval` model's
  production, and ask for one (a request that another approver must decide);
- a site's token: push batches for that site (to the models it was registered for) and read its batches.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from clreg.registry.batches import token_sha256
from clreg.serving.errors import Forbidden, Unauthorized

APPROVER = "approver:"  # an approver's role is "approver:<name>"


class ApproverBook(Protocol):
    """Where approver tokens are found (registry.approvers.Approvers; a test may pass its own)."""

    def name_of(self, token: str) -> str | None: ...

    def digest_of(self, name: str) -> str | None: ...


def bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def matches(token: str, digest: str) -> bool:
    return bool(digest) and hmac.compare_digest(token_sha256(token), digest)


class Tokens:
    """The admin and ops token digests of one deployment, and its approvers."""

    def __init__(self, admin_sha256: str, ops_sha256: str, approvers: ApproverBook | None = None) -> None:
        self.admin = admin_sha256
        self.ops = ops_sha256
        self.approvers = approvers

    def role(self, authorization: str | None) -> str | None:
        """"admin", "ops", "approver:<name>", or None for a token that is none of them (it may be a site's)."""
        token = bearer(authorization)
        if matches(token, self.admin):
            return "admin"
        if matches(token, self.ops):
            return "ops"
        name = self.approvers.name_of(token) if self.approvers is not None else None
        return None if name is None else APPROVER + name

    def digest(self, role: str) -> str | None:
        """The token digest behind a role (what console sessions are signed with); None for no such role."""
        if role in ("admin", "ops"):
            return self.admin if role == "admin" else self.ops
        if role.startswith(APPROVER) and self.approvers is not None:
            return self.approvers.digest_of(role.removeprefix(APPROVER))
        return None

    def require_approver(self, authorization: str | None) -> str:
        """The approver's name.

        Raises:
            Unauthorized: no token. Forbidden: a token that is not an approver's.
        """
        role = self.role(authorization)
        if role is None or not role.startswith(APPROVER):
            raise Forbidden("deciding an approval request needs an approver's token (the admin creates approvers)")
        return role.removeprefix(APPROVER)

    def require_admin(self, authorization: str | None) -> str:
        if self.role(authorization) != "admin":
            raise Forbidden("this action needs the admin token")
        return "admin"

    def require_reader(self, authorization: str | None) -> str:
        role = self.role(authorization)
        if role is None:
            raise Unauthorized("reading this route needs the ops or the admin token")
        return role

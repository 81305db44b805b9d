"""Approvers: the people who approve or decline moves of an `approval` model's production alias.

    {p}:approvers      hash  approver name -> Approver JSON (the token only as its sha256, like a site's)

The admin creates an approver with a name; the token is made here, returned once and stored hashed. A token is
found by comparing its digest with every approver's (constant time each): approvers are few.
"""

from __future__ import annotations

import hmac
import secrets

from pydantic import Field

from clreg.registry.batches import token_sha256
from clreg.registry.connection import translated
from clreg.registry.errors import Conflict, NotFound
from clreg.registry.records import Name, Record, check_name, now, parse
from clreg.registry.store import RedisRegistry


class Approver(Record):
    """Someone who may approve or decline a move of production (never the one who asked for it)."""

    name: Name
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float = Field(default_factory=now)

    def public(self) -> dict[str, object]:
        """The record without its token digest: what listings show."""
        return self.model_dump(exclude={"token_sha256"})


class Approvers:
    """The approver book of one deployment (every model shares it)."""

    def __init__(self, registry: RedisRegistry) -> None:
        self._reg = registry
        self._key = registry.key("approvers")

    @translated
    def add(self, name: str) -> tuple[Approver, str]:
        """A new approver and its token (shown this once); Conflict for a name taken."""
        token = secrets.token_urlsafe(32)
        approver = Approver(name=check_name(name), token_sha256=token_sha256(token))
        if not self._reg.r.hsetnx(self._key, approver.name, approver.model_dump_json()):
            raise Conflict(f"approver {name!r} already exists")
        return approver, token

    @translated
    def remove(self, name: str) -> None:
        """Revoke an approver: its token stops working at once; its past decisions stay in the records."""
        if not self._reg.r.hdel(self._key, check_name(name)):
            raise NotFound(f"approver {name!r} does not exist")

    @translated
    def all(self) -> list[Approver]:
        """Every approver, by name."""
        raw = self._reg.r.hgetall(self._key)
        return [parse(Approver, raw[n]) for n in sorted(raw)]

    def name_of(self, token: str) -> str | None:
        """The approver holding `token`, or None."""
        digest = token_sha256(token)
        found = None
        for approver in self.all():  # every digest compared, so the time says nothing of which one matched
            if hmac.compare_digest(digest, approver.token_sha256):
                found = approver.name
        return found

    @translated
    def digest_of(self, name: str) -> str | None:
        """An approver's token digest (the console signs its sessions with it); None once it was removed."""
        raw = self._reg.r.hget(self._key, check_name(name))
        return None if raw is None else parse(Approver, raw).token_sha256

"""Console sign-in: a signed cookie instead of a bearer header, and a CSRF token for every form.

The cookie holds the role, an expiry and an HMAC of both keyed by that role's token digest, never the token:
a stolen cookie expires, and rotating the token ends every session signed with it. The CSRF token is an
HMAC of the cookie under the same key, so a form only validates in the session that rendered it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from clreg.registry.records import NAME_PATTERN
from clreg.serving.auth import APPROVER, Tokens
from clreg.serving.errors import Forbidden, Unauthorized

COOKIE = "clreg_console"
LIFETIME_S = 8 * 3600


def _digest(tokens: Tokens, role: str) -> str:
    """The key a role's sessions are signed with: its token's digest (an approver removed has none: unsigned)."""
    digest = tokens.digest(role)
    if not digest:
        raise Unauthorized("this console session is not valid; sign in again")
    return digest


def _known(role: str) -> bool:
    name = role.removeprefix(APPROVER)
    return role in ("admin", "ops") or (role.startswith(APPROVER) and bool(NAME_PATTERN.fullmatch(name)))


def _sign(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(tokens: Tokens, token: str, now: float | None = None) -> tuple[str, str]:
    """The role of a token and the cookie value signing it in.

    Raises:
        Unauthorized: the token is not the admin's, the ops' or an approver's.
    """
    role = tokens.role(f"Bearer {token}")
    if role is None:
        raise Unauthorized("the console takes the ops or the admin token, or an approver's")
    expires = int((time.time() if now is None else now) + LIFETIME_S)
    message = f"{role}.{expires}"
    return role, f"{message}.{_sign(_digest(tokens, role), message)}"


def role_of(tokens: Tokens, cookie: str | None, now: float | None = None) -> str:
    """The role a cookie signs in, if it is genuine and unexpired.

    Raises:
        Unauthorized: no cookie, a forged or malformed one, or one that expired.
    """
    parts = (cookie or "").split(".")
    if len(parts) != 3 or not _known(parts[0]) or not parts[1].isdigit():
        raise Unauthorized("sign in to the console first")
    role, expires, signature = parts
    if not hmac.compare_digest(signature, _sign(_digest(tokens, role), f"{role}.{expires}")):
        raise Unauthorized("this console session is not valid; sign in again")
    if int(expires) < (time.time() if now is None else now):
        raise Unauthorized("this console session expired; sign in again")
    return role


def csrf_token(tokens: Tokens, cookie: str) -> str:
    """The token every form of this session carries."""
    return _sign(_digest(tokens, role_of(tokens, cookie)), f"csrf.{cookie}")


def check_action(tokens: Tokens, cookie: str | None, sent_csrf: str | None) -> None:
    """An action needs the admin's session and that session's CSRF token.

    Raises:
        Unauthorized: not signed in. Forbidden: signed in read-only, or the CSRF token is missing or wrong.
    """
    if role_of(tokens, cookie) != "admin":
        raise Forbidden("this action needs the admin token; you are signed in read-only")
    if not sent_csrf or not hmac.compare_digest(sent_csrf, csrf_token(tokens, cookie or "")):
        raise Forbidden("the form's CSRF token is missing or belongs to another session; reload the page")


def check_decision(tokens: Tokens, cookie: str | None, sent_csrf: str | None) -> str:
    """A decision on an approval request needs an approver's session and its CSRF token; the approver's name.

    Raises:
        Unauthorized: not signed in. Forbidden: not signed in as an approver, or the CSRF token is missing or wrong.
    """
    role = role_of(tokens, cookie)
    if not role.startswith(APPROVER):
        raise Forbidden("deciding an approval request needs an approver's token; sign in with yours")
    if not sent_csrf or not hmac.compare_digest(sent_csrf, csrf_token(tokens, cookie or "")):
        raise Forbidden("the form's CSRF token is missing or belongs to another session; reload the page")
    return role.removeprefix(APPROVER)

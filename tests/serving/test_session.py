"""Console sessions: the cookie signs a role without holding the token, expires, and cannot be forged; actions
need the admin's session and that session's CSRF token."""

from __future__ import annotations

import time

import pytest

from clreg.registry.batches import token_sha256
from clreg.serving import session
from clreg.serving.auth import Tokens
from clreg.serving.errors import Forbidden, Unauthorized

TOKENS = Tokens(token_sha256("admin-secret"), token_sha256("ops-secret"))


def test_a_cookie_signs_the_role_and_never_holds_the_token() -> None:
    role, cookie = session.issue(TOKENS, "ops-secret", now=1000.0)
    assert role == "ops" and "ops-secret" not in cookie
    assert session.role_of(TOKENS, cookie, now=1000.0 + session.LIFETIME_S - 1) == "ops"
    with pytest.raises(Unauthorized, match="expired"):
        session.role_of(TOKENS, cookie, now=1000.0 + session.LIFETIME_S + 1)


def test_forged_cookies_and_wrong_tokens_are_refused() -> None:
    _, cookie = session.issue(TOKENS, "ops-secret", now=1000.0)
    role, expires, signature = cookie.split(".")
    for forged in (f"admin.{expires}.{signature}", f"ops.{int(expires) + 999}.{signature}", "ops.1.", "", "a.b"):
        with pytest.raises(Unauthorized):
            session.role_of(TOKENS, forged, now=1000.0)
    with pytest.raises(Unauthorized):
        session.issue(TOKENS, "site-token")
    rotated = Tokens(TOKENS.admin, token_sha256("new-ops-secret"))  # a rotated token ends its sessions
    with pytest.raises(Unauthorized):
        session.role_of(rotated, cookie, now=1000.0)


def test_actions_need_the_admin_session_and_its_own_csrf_token() -> None:
    _, admin = session.issue(TOKENS, "admin-secret")
    _, other_admin = session.issue(TOKENS, "admin-secret", now=time.time() + 100)  # another sign-in
    _, ops = session.issue(TOKENS, "ops-secret")
    session.check_action(TOKENS, admin, session.csrf_token(TOKENS, admin))
    with pytest.raises(Forbidden, match="admin token"):
        session.check_action(TOKENS, ops, session.csrf_token(TOKENS, ops))
    for sent in (None, "", session.csrf_token(TOKENS, other_admin)):
        with pytest.raises(Forbidden, match="CSRF"):
            session.check_action(TOKENS, admin, sent)

"""Errors of the clreg process itself (the CLI turns each into a one-line message and an exit code).

ClregError
 ├── HomeBusy        another `clreg up` holds the state folder's lock
 ├── InsecureHome    the state folder or its tokens file can be read by others, or belongs to another user
 └── NoRedis         no Redis to talk to: none configured and no embedded one running for this home
"""

from __future__ import annotations


class ClregError(Exception):
    """Root of the errors the clreg process raises about its own setup."""


class HomeBusy(ClregError):
    """The state folder is in use by another running `clreg up`."""


class InsecureHome(ClregError):
    """The state folder's secrets are not private to this user."""


class NoRedis(ClregError):
    """Neither CLREG_REDIS__URL nor a running embedded Valkey for this home."""

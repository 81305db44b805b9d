"""Role processes a failing test left running are killed before the next test starts; a daemon on the test stack."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from clreg import context
from clreg.client import Client
from clreg.daemon import Daemon
from clreg.embedded import Stack
from tests.clreg import processes


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    yield
    processes.reap()


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[tuple[Client, context.Context]]:
    """A daemon following the test stack's stream on a thread, and an admin client of its gateway."""
    ctx = context.build(stack.settings, stack.store, stack.url)
    daemon = Daemon(ctx)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    client = Client(stack.url, stack.admin_token)
    client.wait_ready()
    yield client, ctx
    daemon.stop()
    thread.join(timeout=30)

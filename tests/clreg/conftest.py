"""Role processes a failing test left running are killed before the next test starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clreg import processes


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    yield
    processes.reap()

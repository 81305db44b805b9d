"""`clreg doctor`: one line per check; a wrong Redis password, an unwritable artifact store and an unreachable
Serve endpoint each fail their own line, and the command exits 1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from clreg import doctor
from clreg.cli import app
from clreg.registry.connection import StoreConfig
from clreg.registry.store import RedisRegistry


@pytest.fixture
def acl_user(registry: RedisRegistry) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a known password (removed afterwards)."""
    name, password = f"doctor-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    registry.r.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "+@all")
    yield name, password
    registry.r.execute_command("ACL", "DELUSER", name)


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def test_storage_checks_pass_and_fail_one_line_each(store_cfg: StoreConfig, acl_user: tuple[str, str],
                                                     tmp_path: Path) -> None:
    user, password = acl_user
    good = doctor.storage(StoreConfig(url=_with_user(store_cfg.url, user, password), prefix="doc"), str(tmp_path))
    assert [(c.what, c.ok) for c in good] == [("redis", True), ("artifacts", True)]
    assert password not in good[0].detail and "***" in good[0].detail  # the secret is never printed
    (tmp_path / "a-file").write_text("not a folder")
    bad = doctor.storage(StoreConfig(url=_with_user(store_cfg.url, user, "wrong"), prefix="doc"),
                         str(tmp_path / "a-file" / "artifacts"))
    assert [(c.what, c.ok) for c in bad] == [("redis", False), ("artifacts", False)]
    assert "invalid username-password pair" in bad[0].detail or "WRONGPASS" in bad[0].detail
    assert "cannot be created" in bad[1].detail
    assert all("\n" not in c.line() for c in bad)


def test_every_ray_node_runs_the_storage_checks(store_cfg: StoreConfig, tmp_path: Path, ray_session: None) -> None:
    checks = doctor.nodes(store_cfg, str(tmp_path))
    assert {(c.what, c.ok) for c in checks} == {("redis", True), ("artifacts", True)}
    assert all(c.where.startswith("node ") for c in checks)


def test_the_command_exits_1_naming_what_failed(store_cfg: StoreConfig, acl_user: tuple[str, str],
                                                tmp_path: Path) -> None:
    user, _ = acl_user
    env = {"CLREG_HOME": str(tmp_path), "CLREG_REDIS__URL": _with_user(store_cfg.url, user, "wrong"),
           "CLREG_SERVE__PORT": "1"}
    out = CliRunner().invoke(app, ["doctor"], env=env)
    assert out.exit_code == 1, out.output
    failed = [line for line in out.output.splitlines() if line.startswith("FAIL")]
    assert [line.split()[2] for line in failed] == ["redis", "serve"]  # artifacts (a local folder) are fine

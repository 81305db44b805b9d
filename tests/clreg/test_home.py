"""The state folder keeps its secrets private: created 0700, tokens 0600, a loose tokens file refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from clreg.errors import InsecureHome
from clreg.home import Home
from tests.clreg.processes import CLREG


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_tokens_are_private_and_stable(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    first = home.secrets()
    assert set(first) == {"admin", "ops", "valkey"} and len(set(first.values())) == 3
    assert _mode(home.path) == 0o700 and _mode(home.path / "tokens.json") == 0o600
    assert home.secrets() == first  # created once


def test_an_existing_home_is_tightened_and_a_loose_tokens_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "home"
    path.mkdir(mode=0o755)
    home = Home(path)
    home.create()
    assert _mode(path) == 0o700
    home.secrets()
    (path / "tokens.json").chmod(0o644)
    with pytest.raises(InsecureHome, match="chmod 600"):
        home.secrets()


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "tokens.json").write_text(json.dumps({"admin": "a", "ops": "o", "valkey": "v"}))
    (home / "tokens.json").chmod(0o640)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLREG_")}, "CLREG_HOME": str(home)}
    done = subprocess.run([CLREG, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "mode 0640" in done.stdout and "chmod 600" in done.stdout

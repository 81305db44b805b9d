"""The documentation site builds without a broken link, and its generated HTTP reference matches the gateway."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def gen_http() -> ModuleType:
    """docs/gen_http.py, loaded from its path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_http", ROOT / "docs" / "gen_http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` as CI runs it: a link to a missing page or anchor, or a missing snippet, fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0, not a warning of ours
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "http" / "index.html").exists()
    tour = (tmp_path / "site" / "tour" / "index.html").read_text()
    assert "drives five simulated sites through a stack of its own" in tour, "the README's tour, by snippet"


def test_the_http_reference_is_the_gateways_openapi_document(redis_url: str) -> None:
    module = gen_http()
    assert module.generate(redis_url) == module.PAGE.read_text(), "run python docs/gen_http.py"


def test_the_key_reference_is_the_schema() -> None:
    spec = importlib.util.spec_from_file_location("gen_keys", ROOT / "docs" / "gen_keys.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate() == module.PAGE.read_text(), "run python docs/gen_keys.py"


def test_every_route_says_who_may_call_it() -> None:
    """Each route of the reference names its token; the routes that check one themselves are named in AUTH."""
    text = (ROOT / "docs" / "reference" / "http.md").read_text()
    index = text[text.index("| method | path | auth | summary |"):text.index("\n## ")]
    rows = [line.split(" | ") for line in index.splitlines()[2:]]
    assert len(rows) >= 25
    auth = {row[1].split("`")[1]: row[2] for row in rows if row[0] == "| POST"}
    assert auth["/v1/sites/{site}/batches"] == "site"
    assert auth["/v1/models"] == "admin"
    assert auth["/v1/predict"].startswith("none")

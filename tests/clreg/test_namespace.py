"""clreg installs one import name: PyPI's `registry` and `learner` can sit beside it and keep their own names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clreg.learner.errors import ModelFactoryError
from clreg.learner.models import check_factory
from clreg.serving.config import ServingConfig

FOREIGN = ("registry==0.4.2", "learner==0.1.3")  # generic names that clreg's folders once installed as

# Every clreg module imports with the foreign packages first on the path; `registry` and `learner` resolve to
# theirs. Neither foreign package imports cleanly on Python 3.11 (registry 0.4.2 is Python 2 code, learner needs
# torchvision), so importing them must fail in *their* files: proof the name is theirs, not clreg's.
CHECK = """
import importlib, importlib.util, pkgutil, sys, traceback
import clreg
names = [m.name for m in pkgutil.walk_packages(clreg.__path__, "clreg.")]
for sub in ("registry", "learner", "monitor", "serving"):
    pkg = importlib.import_module("clreg." + sub)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print("clreg", len(names))
for name in ("registry", "learner"):
    print(name, importlib.util.find_spec(name).origin)
    try:
        importlib.import_module(name)
    except Exception as e:
        where = e.filename if isinstance(e, SyntaxError) else traceback.extract_tb(e.__traceback__)[-1].filename
        print(name, "raised in", where)
"""


def test_foreign_registry_and_learner_keep_their_names(tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), *FOREIGN],
                         capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, pip.stderr[-2000:]
    # cwd outside the checkout, foreign packages first: as a user's environment, not the repository root, sees it
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=240, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "DO_NOT_TRACK": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines() if " raised in " not in line)
    root = Path(__file__).parents[2]
    modules = [f for d in ("clreg", "registry", "learner", "monitor", "serving") for f in (root / d).glob("*.py")
               if f.name != "__init__.py"]
    assert int(lines["clreg"]) == len(modules)  # every module of the five packages imported
    for name in ("registry", "learner"):
        assert lines[name].startswith(str(target)), lines
    raised = [line for line in out.stdout.splitlines() if " raised in " in line]
    assert len(raised) == 2 and all(line.split(" raised in ")[1].startswith(str(target)) for line in raised), raised


def test_only_the_namespaced_factories_are_trusted() -> None:
    allowed = ServingConfig().factory_prefixes
    assert allowed == ("clreg.learner.models",)
    check_factory("clreg.learner.models:small_cnn", allowed)
    with pytest.raises(ModelFactoryError, match="not from an allowed module"):
        check_factory("learner.models:small_cnn", allowed)  # a foreign `learner` earlier on sys.path runs nothing

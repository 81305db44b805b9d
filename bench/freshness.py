"""Whether a result still describes the code: a result is stale once a commit after the one it ran at changed
what its benchmark exercises.

Each benchmark declares the paths it exercises (`EXERCISES` in bench/<name>.py, read here without importing the
script). A result names its commit. A deliberate "still valid" is a line in bench/results/still-valid.json:
{"<result>": {"commit": "<the commit reviewed up to>", "reason": "<why the changes up to it leave the figures as
they are>"}}: changes after that commit make the result stale again.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STILL_VALID = RESULTS / "still-valid.json"


def script(result: str) -> Path:
    """The benchmark that writes a result (bench/ewc.py also writes ewc-freeze-10seeds)."""
    return ROOT / "bench" / f"{result.split('-')[0]}.py"


def exercised(result: str) -> tuple[str, ...]:
    """The paths a result's benchmark declares it exercises (its own script always among them)."""
    path = script(result)
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "EXERCISES" for t in node.targets):
            return (str(path.relative_to(ROOT)), *ast.literal_eval(node.value))
    raise ValueError(f"{path.relative_to(ROOT)} declares no EXERCISES")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def changes_since(commit: str, paths: tuple[str, ...]) -> list[str]:
    """Commits after `commit` (short hash and subject, newest first) that touched any of `paths`; all of them
    when `commit` is unknown to this repository."""
    try:
        _git("cat-file", "-e", f"{commit}^{{commit}}")
        span = f"{commit}..HEAD"
    except subprocess.CalledProcessError:
        span = "HEAD"
    out = _git("log", "--format=%h %s", span, "--", *paths)
    return [line[:90] for line in out.splitlines() if line]


def stale(result: str, data: dict) -> str | None:
    """Why a result no longer describes the code, or None while it does. A result whose parts each name the commit
    they ran at (a rerun of one network of bench/realnet.py keeps the other's) is as stale as its oldest part."""
    parts = data.get("results")
    commits = [str(p["commit"]) for p in parts if isinstance(p, dict) and p.get("commit")] \
        if isinstance(parts, list) else []
    for commit in commits or [str(data.get("commit") or "")]:
        why = _stale_at(result, commit)
        if why:
            return why
    return None


def _stale_at(result: str, commit: str) -> str | None:
    if not commit or commit == "unknown":
        return "it names no commit"
    dirty = commit.endswith("+dirty")
    reviewed = json.loads(STILL_VALID.read_text()).get(result) if STILL_VALID.exists() else None
    if dirty and not reviewed:
        return f"it ran on uncommitted changes to {commit[:7]}"
    # fresh since the commit it ran at, or since the commit a review vouched for it up to (a rerun after a review
    # is judged by its own commit)
    changes = [] if dirty else changes_since(commit, exercised(result))
    if (dirty or changes) and reviewed:
        changes = changes_since(reviewed["commit"], exercised(result))
    if changes:
        return f"{len(changes)} later commit(s) changed what it exercises, the newest: {changes[0]}"
    return None

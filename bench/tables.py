"""The benchmark pages' tables, rendered from bench/results/*.json so that no figure is copied by hand.

    python bench/tables.py          # rewrite every table in docs/ from the results
    python bench/tables.py --check  # exit 1, naming the tables, when a page under docs/ differs from the results

A table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->` on one page under docs/ (the benchmark
pages, docs/benchmarks/); below it a line names the result file, its commit and the CPU it ran on. A result
that does not exist yet (or predates the figures a table needs) gives a one-line placeholder that says what
to run. The prose around the tables is written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import freshness  # noqa: E402
from bench import learning_tables as learning  # noqa: E402
from bench import serving_tables as serving  # noqa: E402
from bench.cells import Json, NotMeasured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"


def source(name: str, result: Json) -> str:
    """Which file, which commit, which CPU: what a reader needs to trust or redo a table."""
    commit = result.get("commit")
    short = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "") if commit else "not recorded"
    cpu = result.get("cpu_model") or result.get("machine", {}).get("cpu_model", "CPU not recorded")
    cores = result.get("machine", {}).get("cpus")
    return f"`bench/results/{name}.json`: commit {short}, {cpu}{f', {cores} cores' if cores else ''}"


# --- pages ------------------------------------------------------------------------------------------------

def load(name: str) -> Json:
    return json.loads((RESULTS / f"{name}.json").read_text())


def available(name: str) -> bool:
    return (RESULTS / f"{name}.json").exists()


RENDERERS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {  # block: (result files, its table)
    "registry": (("registry",), lambda: serving.registry(load("registry"))),
    "ewc": (("ewc",), lambda: learning.ewc(load("ewc"))),
    "ewc-paired": (("ewc", "ewc-freeze-10seeds"),
                   lambda: learning.ewc_paired(load("ewc"), load("ewc-freeze-10seeds"))),
    "continual": (("continual", "continual-selection"), lambda: learning.continual(load("continual"))),
    "fisher": (("fisher",), lambda: learning.fisher(load("fisher"))),
    "fisher-zoo": (("fisher",), lambda: learning.fisher_zoo(load("fisher"))),
    "calibration": (("calibration",), lambda: learning.calibration(load("calibration"))),
    "drift": (("drift",), lambda: learning.drift(load("drift"))),
    "serving": (("serving",), lambda: serving.serving(load("serving"))),
    "serving-alone": (("serving",), lambda: serving.serving_alone(load("serving"))),
    "sites": (("sites",), lambda: learning.sites(load("sites"))),
    "pipeline": (("pipeline",), lambda: serving.pipeline(load("pipeline"))),
    "console": (("console",), lambda: serving.console(load("console"))),
    "swap": (("swap",), lambda: serving.swap(load("swap"))),
    "replica-kill": (("replica_kill",), lambda: serving.replica_kill(load("replica_kill"))),
    "multiplex": (("multiplex",), lambda: serving.multiplex(load("multiplex"))),
    "realnet": (("realnet",), lambda: learning.realnet(load("realnet"))),
    "scale": (("scale",), lambda: learning.scale(load("scale"))),
}
BLOCK = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n.*?<!-- /table:(?P=name) -->", re.S)


def producer(name: str) -> str:
    """The command that writes a result file (bench/ewc.py also writes ewc-freeze-10seeds, see its page)."""
    script = ROOT / "bench" / f"{name.split('-')[0]}.py"
    return f"`python bench/{script.name}`" if script.exists() else "its benchmark"


def render(name: str) -> str:
    """The block of one table; while its result is missing or predates it, one line saying what to run."""
    results, body = RENDERERS[name]
    missing = [r for r in results if not available(r)]
    try:
        if missing:
            files = ", ".join(f"`bench/results/{r}.json`" for r in missing)
            raise NotMeasured(f"{files} does not exist", missing[0])
        rendered = f"{body()}\n\n<sub>{'; '.join(source(r, load(r)) for r in results)}</sub>"
    except NotMeasured as e:
        reason, result = e.args[0], e.args[1] if len(e.args) > 1 else results[0]
        rendered = f"*Not measured yet: {reason}. Run {producer(result)}, then `python bench/tables.py`.*"
    return f"<!-- table:{name} -->\n{rendered}\n<!-- /table:{name} -->"


def regenerate(text: str) -> tuple[str, list[str]]:
    """text with every table block rendered afresh, and the names of the blocks that changed."""
    changed: list[str] = []

    def one(match: re.Match[str]) -> str:
        fresh = render(match["name"])
        if fresh != match[0]:
            changed.append(match["name"])
        return fresh

    return BLOCK.sub(one, text), changed


def pages() -> dict[Path, str]:
    """Every Markdown page under docs/ that holds a table block, with its text."""
    out = {}
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text()
        if BLOCK.search(text):
            out[path] = text
    return out


def placement(found: dict[Path, str]) -> list[str]:
    """What is wrong with where the blocks are: a table without a block, a block twice, a block of no table."""
    where: dict[str, list[Path]] = {}
    for path, text in found.items():
        for m in BLOCK.finditer(text):
            where.setdefault(m["name"], []).append(path)
    problems = [f"no block for {name}" for name in RENDERERS if name not in where]
    problems += [f"{name} appears {len(paths)} times ({', '.join(str(p.relative_to(ROOT)) for p in paths)})"
                 for name, paths in where.items() if len(paths) > 1]
    problems += [f"no renderer for the block {name}" for name in where if name not in RENDERERS]
    return problems


def outdated() -> dict[str, str]:
    """Every result a table shows that no longer describes the code (bench/freshness.py), with why."""
    names = sorted({r for results, _ in RENDERERS.values() for r in results if available(r)})
    return {name: why for name in names if (why := freshness.stale(name, load(name)))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is stale")
    args = parser.parse_args()
    found = pages()
    problems = placement(found)
    if problems:
        print("docs/ table blocks: " + "; ".join(problems), file=sys.stderr)
        return 1
    stale = []
    for path, text in found.items():
        fresh, changed = regenerate(text)
        if not changed:
            continue
        stale.append(f"{path.relative_to(ROOT)}: {', '.join(changed)}")
        if not args.check:
            path.write_text(fresh)
    if args.check:
        if stale:
            print(f"stale tables in {'; '.join(stale)} (run python bench/tables.py)", file=sys.stderr)
        old = outdated()
        for name, why in old.items():
            print(f"bench/results/{name}.json is out of date: {why}; rerun {producer(name)}, or record in "
                  "bench/results/still-valid.json why the changes leave its figures as they are", file=sys.stderr)
        return 1 if stale or old else 0
    print(f"rewrote {'; '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

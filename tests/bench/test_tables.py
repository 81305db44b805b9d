"""The benchmark pages' tables (docs/benchmarks/) are the results' figures, rendered by bench/tables.py."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import cells, tables


def test_docs_tables_match_the_results() -> None:
    found = tables.pages()
    assert tables.placement(found) == [], "every table has exactly one block under docs/"
    stale = {path.name: changed for path, text in found.items() if (changed := tables.regenerate(text)[1])}
    assert stale == {}, f"run python bench/tables.py: {stale} differ from bench/results"
    assert all(path.is_relative_to(tables.DOCS / "benchmarks") for path in found)


def test_a_changed_figure_changes_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    result = copy.deepcopy(tables.load("registry"))
    result["figures"]["clreg"]["resolve+record"]["p50_ms"] = result["figures"]["mlflow"]["resolve+record"]["p50_ms"] / 7
    result["commit"], result["headline"] = "0123456789abcdef", {"operation": "resolve+record"}
    monkeypatch.setattr(tables, "load", lambda name: result)
    block = tables.render("registry")
    assert "| **7.0x** |" in block
    assert "commit 0123456" in block


def test_numbers_keep_three_significant_digits() -> None:
    assert [cells.num(x) for x in (0.04791, 2.4149, 196.2, 1234.5)] == ["0.0479", "2.41", "196", "1234"]
    assert [cells.lam(x) for x in (300.0, 3000.0, 10000.0, 100000.0)] == ["300", "3e3", "1e4", "1e5"]


def test_a_missing_result_leaves_a_line_saying_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "available", lambda name: name != "realnet")
    assert tables.render("realnet") == (
        "<!-- table:realnet -->\n*Not measured yet: `bench/results/realnet.json` does not exist. Run "
        "`python bench/realnet.py`, then `python bench/tables.py`.*\n<!-- /table:realnet -->")


def test_the_zoo_table_waits_for_a_fisher_result_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    older = {"commit": "33327ec96005b5dc6b5fefc39c57a9dd2060692c", "cpu_model": "AMD EPYC", "figures": []}
    monkeypatch.setattr(tables, "available", lambda name: True)
    monkeypatch.setattr(tables, "load", lambda name: older)
    assert "predates the zoo's figures. Run `python bench/fisher.py`" in tables.render("fisher-zoo")
    ways = {"rule": 0.0512, "best": 0.0498, "grouped": 0.061, "unfolded": 0.0498, "paired": None}
    newer = {**older, "zoo": [{"network": "resnet18", "side": 64, "samples": 128, "epoch_s": 1.234, "fisher_s": 2.468,
                               "fisher_over_epoch": 2.0, "conv_ways_s_16_samples": ways}]}
    monkeypatch.setattr(tables, "load", lambda name: newer)
    block = tables.render("fisher-zoo")
    assert "| resnet18 | 1x64x64 | 128 | 1.2 | 2.5 | **2.00** | 0.051 / 0.05 / 0.061 / 0.05 / - |" in block
    assert "<sub>`bench/results/fisher.json`: commit 33327ec, AMD EPYC</sub>" in block


def realnet_result() -> dict[str, Any]:
    """A result in the shape bench/realnet.py writes: one network, two updates (the second rejected)."""
    update = {"site": "base", "status": "promoted", "push_to_verdict": 61.23, "drift": 1.5, "epoch": 9.87,
              "fisher": 19.1, "fisher_over_epoch": 1.935, "train": 25.0, "reference_calibration": 3.25, "gate": 4.0,
              "swap": 0.42}
    rejected = {**update, "site": "contrast", "status": "rejected", "epoch": float("nan"),
                "fisher_over_epoch": float("nan")}
    del rejected["swap"]
    stored = {"version": 1, "bytes": 3 * 2**20, "new_bytes": 2 * 2**20, "weights_bytes": 2**20, "by_artifact": {},
              "new_by_artifact": {}, "new_over_weights": 2.0}
    serving = [{"network": "resnet18", "side": side, "clients": c, "requests": 100, "failed": int(side == "bare"),
                "rps": rps * c, "p50_ms": 101.4, "p99_ms": 250.0}
               for c in (1, 4) for side, rps in (("clreg", 9.0), ("bare", 10.0))]
    network = {"network": "resnet18", "updates": [update, rejected], "bytes": [stored, {**stored, "version": 2}],
               "peak_rss_mib": {"worker": 2048.4, "replica": 900.6}, "checkpoint_bytes": 46 * 2**20,
               "serving": serving, "device": "cpu",
               "swaps": {"requests": 512, "failed": 0, "swap_s": [0.3, 0.4, 0.5], "steady_p99_ms": 300.0,
                         "during_worst_ms": 420.0, "worst_over_steady_p99": 1.4}}
    return {"commit": "abcdef0123456789", "cpu_model": "AMD EPYC", "machine": {"cpus": 2}, "side": 224,
            "images_per_batch": 300, "epochs": 2, "results": [network]}


def test_realnet_renders_updates_serving_swaps_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "available", lambda name: True)
    monkeypatch.setattr(tables, "load", lambda name: realnet_result())
    block = tables.render("realnet")
    assert "Updates through the daemon at 1x224x224 (300 images a batch, 2 epochs)" in block
    assert ("| resnet18 | base | promoted | **61** | 1.5 | 9.9 | 19 | 1.9 | 4 | 3.2 | 0.42 | 3.0 | 2.0 | 1.0 | 2.00 |"
            in block)
    assert "| resnet18 | contrast | rejected | **61** | 1.5 | - | 19 | - | 4 | 3.2 | - |" in block
    assert "| resnet18 | 4 | 40.0 | 36.0 | **0.90** | 101 / 250 | 101 / 250 | 1 |" in block
    assert "| resnet18 | cpu | 3 | 512 | 0 | 1.40 | 2048 | 901 |" in block
    assert "<sub>`bench/results/realnet.json`: commit abcdef0, AMD EPYC, 2 cores</sub>" in block
    assert "Measured at" not in block
    two = realnet_result()
    two["results"] = [{**two["results"][0], "commit": "1234567aa"},
                      {**two["results"][0], "network": "densenet121", "commit": "abcdef0bb"}]
    monkeypatch.setattr(tables, "load", lambda name: two)
    assert "Measured at: resnet18 1234567, densenet121 abcdef0" in tables.render("realnet")


def test_placement_names_a_table_without_a_block_and_a_block_twice() -> None:
    every = "\n".join(f"<!-- table:{name} -->\n<!-- /table:{name} -->" for name in tables.RENDERERS if name != "swap")
    twice = "<!-- table:drift -->\n<!-- /table:drift -->\n<!-- table:nosuch -->\n<!-- /table:nosuch -->"
    problems = tables.placement({Path(tables.DOCS / "a.md"): every, Path(tables.DOCS / "b.md"): twice})
    assert problems == ["no block for swap", "drift appears 2 times (docs/a.md, docs/b.md)",
                        "no renderer for the block nosuch"]


def test_a_result_older_than_a_change_to_what_it_exercises_is_out_of_date(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    from bench import freshness

    head = freshness._git("rev-parse", "HEAD")
    first = freshness._git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]
    monkeypatch.setattr(freshness, "STILL_VALID", tmp_path / "still-valid.json")
    assert freshness.exercised("drift")[:2] == ("bench/drift.py", "monitor/")
    assert freshness.stale("drift", {"commit": head}) is None  # nothing changed since
    why = freshness.stale("drift", {"commit": first})  # the repository's first commit: everything changed since
    assert why is not None and "later commit(s) changed what it exercises" in why
    assert "uncommitted" in (freshness.stale("drift", {"commit": head + "+dirty"}) or "")
    assert freshness.stale("drift", {}) == "it names no commit"
    (tmp_path / "still-valid.json").write_text(json.dumps({"drift": {"commit": first, "reason": "an old review"}}))
    assert freshness.stale("drift", {"commit": head}) is None  # rerun after a review: judged by its own commit
    (tmp_path / "still-valid.json").write_text(json.dumps({"drift": {"commit": head, "reason": "reviewed"}}))
    assert freshness.stale("drift", {"commit": first}) is None  # reviewed up to HEAD, with its reason
    parts = {"commit": head, "results": [{"network": "a", "commit": head}, {"network": "b", "commit": first}]}
    assert freshness.stale("realnet", parts) is not None  # as old as its oldest part, whatever the file's commit
    assert freshness.stale("realnet", {**parts, "results": parts["results"][:1]}) is None
    monkeypatch.setattr(tables, "outdated", lambda: {"drift": why})
    monkeypatch.setattr(sys, "argv", ["tables.py", "--check"])
    assert tables.main() == 1


def test_an_estimate_under_its_noise_floor_prints_as_at_most_the_floor() -> None:
    assert cells.at_least_floor(0.0, 0.021) == "<= 0.021"
    assert cells.at_least_floor(0.044, 0.021) == "0.044"
    assert cells.at_least_floor(0.0, None) == "0.000"  # a result from before the floor was measured

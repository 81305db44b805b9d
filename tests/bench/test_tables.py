"""The README's benchmark tables are the results' figures, rendered by bench/tables.py."""

from __future__ import annotations

import copy

import pytest

from bench import tables


def test_readme_tables_match_the_results() -> None:
    text = tables.README.read_text()
    _, changed = tables.regenerate(text)
    assert changed == [], f"run python bench/tables.py: {changed} differ from bench/results"
    assert {m["name"] for m in tables.BLOCK.finditer(text)} == set(tables.RENDERERS)


def test_a_changed_figure_changes_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    result = copy.deepcopy(tables.load("registry"))
    result["figures"]["clreg"]["resolve+record"]["p50_ms"] = result["figures"]["mlflow"]["resolve+record"]["p50_ms"] / 7
    result["commit"], result["headline"] = "0123456789abcdef", {"operation": "resolve+record"}
    monkeypatch.setattr(tables, "load", lambda name: result)
    block = tables.render("registry")
    assert "| **7.0x** |" in block
    assert "commit 0123456" in block


def test_numbers_keep_three_significant_digits() -> None:
    assert [tables.num(x) for x in (0.04791, 2.4149, 196.2, 1234.5)] == ["0.0479", "2.41", "196", "1234"]
    assert [tables.lam(x) for x in (300.0, 3000.0, 10000.0, 100000.0)] == ["300", "3e3", "1e4", "1e5"]

"""Drift checks through Evidently on synthetic batches: exact verdicts for fixed seeds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift

from clreg.monitor.columns import ColumnValueDrift
from clreg.monitor.drift import DriftConfig, check_drift, save_snapshot
from clreg.monitor.errors import DriftCheckFailed, InvalidInput
from clreg.monitor.features import IMAGE_STAT_COLUMNS, FeatureConfig, Reference, batch_features, fit_reference
from clreg.monitor.findings import DriftFindings
from tests.monitor.data import embed, images, labels

BATCH = "ab" * 32
N_COLUMNS = 16 + len(IMAGE_STAT_COLUMNS)


@pytest.fixture(scope="module")
def reference() -> Reference:
    """1,200 reference images: 600 fit the PCA, 600 form the reference table."""
    rng = np.random.default_rng(1234)
    return fit_reference(embed, images(rng, 1200), labels(rng, 1200), FeatureConfig())


def check(ref: Reference, current: pd.DataFrame, cfg: DriftConfig | None = None) -> DriftFindings:
    result = check_drift(
        ref,
        current,
        report_id="r-1",
        model="cnn",
        site="site-a",
        batch_id=BATCH,
        cfg=cfg or DriftConfig(),
    )
    report, html = result.findings, result.html
    assert html.lstrip().startswith("<!DOCTYPE html>") and "img_mean" in html
    return report


def drifted(report: DriftFindings) -> set[str]:
    return {c.column for c in report.columns if c.drifted}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_unchanged_batches_raise_no_drift(reference: Reference, seed: int) -> None:
    rng = np.random.default_rng(seed)
    report = check(reference, batch_features(embed, reference, images(rng, 200), labels(rng, 200)))
    assert (report.drift, report.feature_drift, report.drifted_share) == (False, False, 0.0)
    assert report.label_drift is not None and not report.label_drift.drifted
    assert report.embedding_mmd is not None and not report.embedding_mmd.drifted
    assert [c.column for c in report.columns] == reference.feature_columns
    # Every column gets K-S at the Bonferroni threshold; a p-value is never below it here.
    assert {(c.method, c.threshold) for c in report.columns} == {("ks", 0.01 / N_COLUMNS)}
    assert min(c.score for c in report.columns) > 0.01 / N_COLUMNS
    assert report.samples == 200


def test_brightness_shift_is_flagged_in_the_right_columns(reference: Reference) -> None:
    rng = np.random.default_rng(10)
    report = check(reference, batch_features(embed, reference, images(rng, 200, brightness=0.2), labels(rng, 200)))
    # Intensity levels move; spread and sharpness do not (nothing is clipped); emb_0 is the brightness axis.
    intensity = {"emb_0", "img_mean", "img_p10", "img_p50", "img_p90"}
    assert intensity <= drifted(report)
    assert not {"img_std", "img_laplacian"} & drifted(report)
    assert report.drifted_share == pytest.approx(len(drifted(report)) / N_COLUMNS)
    ranked = [c.column for c in sorted(report.columns, key=lambda c: c.score)]  # K-S p-values: strongest first
    assert set(ranked[:len(drifted(report))]) == drifted(report) and "img_mean" in ranked[:len(intensity) + 2]
    assert report.feature_drift and report.drift
    assert report.embedding_mmd is not None and report.embedding_mmd.drifted
    assert report.label_drift is not None and not report.label_drift.drifted


def test_mild_noise_is_caught_by_a_single_column(reference: Reference) -> None:
    rng = np.random.default_rng(11)
    report = check(reference, batch_features(embed, reference, images(rng, 200, noise_sd=0.03), None))
    assert "img_laplacian" in drifted(report) and "img_mean" not in drifted(report)
    assert report.feature_drift and report.drift
    assert report.label_drift is None  # no labels given


def test_prevalence_change_alone_is_label_drift(reference: Reference) -> None:
    rng = np.random.default_rng(12)
    # Images do not depend on the label, so a new class mix leaves every image feature unchanged.
    y = labels(rng, 200, prevalence=(0.7, 0.1, 0.1, 0.1))
    report = check(reference, batch_features(embed, reference, images(rng, 200), y))
    assert report.label_drift is not None
    label = report.label_drift
    assert (label.method, label.threshold, label.drifted) == ("chisquare_2sample", 0.01, True)
    assert report.label_drift.score < 1e-10
    assert not report.feature_drift and drifted(report) == set()
    assert report.embedding_mmd is not None and not report.embedding_mmd.drifted
    assert report.drift


def test_unseen_class_is_label_drift(reference: Reference) -> None:
    rng = np.random.default_rng(13)
    y = labels(rng, 200)
    y[:10] = 9
    report = check(reference, batch_features(embed, reference, images(rng, 200), y))
    assert report.label_drift is not None and report.label_drift.drifted and report.label_drift.score < 1e-6


def test_large_reference_is_sampled_down_to_ks_or_scored_by_wasserstein(reference: Reference) -> None:
    rng = np.random.default_rng(14)
    current = batch_features(embed, reference, images(rng, 100), None)
    sampled = check(reference, current, DriftConfig(max_reference_rows=500, mmd=False))
    assert {c.method for c in sampled.columns} == {"ks"} and sampled.embedding_mmd is None
    # Over 1,000 reference rows Evidently switches to normed Wasserstein, scored against its own 0.1.
    doubled = pd.concat([reference.features] * 2, ignore_index=True)
    big = Reference(reference.pca_mean, reference.pca_components, doubled)
    wasserstein = check(big, current, DriftConfig(max_reference_rows=1200, mmd=False))
    assert {(c.method, c.threshold) for c in wasserstein.columns} == {("wasserstein", 0.1)}
    assert all(c.drifted == (c.score >= 0.1) for c in wasserstein.columns)


def test_constant_columns_give_no_drift_and_no_warning() -> None:
    rng = np.random.default_rng(15)
    flat = np.full((300, 1, 8, 8), 0.5, dtype=np.float32)

    def noise(x: np.ndarray) -> np.ndarray:
        return rng.normal(size=(len(x), 6))

    ref = fit_reference(noise, flat, labels(rng, 300), FeatureConfig(pca_components=3))
    current = batch_features(noise, ref, flat[:80], labels(rng, 80))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check(ref, current)
    stats = [c for c in report.columns if c.column in IMAGE_STAT_COLUMNS]
    assert {(c.method, c.score, c.drifted) for c in stats} == {("z", 1.0, False)}
    assert not report.drift


def test_bad_feature_tables_are_refused(reference: Reference) -> None:
    rng = np.random.default_rng(16)
    current = batch_features(embed, reference, images(rng, 20), labels(rng, 20))
    with pytest.raises(InvalidInput, match="lacks"):
        check(reference, current.drop(columns="img_mean"))
    with pytest.raises(InvalidInput, match="NaN"):
        check(reference, current.assign(img_mean=np.nan))
    with pytest.raises(InvalidInput, match="integers"):
        check(reference, current.assign(label=0.5))
    with pytest.raises(InvalidInput, match="empty"):
        check(reference, current.iloc[:0])


def test_snapshot_goes_to_a_workspace_project_per_model(reference: Reference, tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    current = batch_features(embed, reference, images(rng, 50), None)
    result = check_drift(
        reference, current, report_id="r-2", model="cnn", site="site-b", batch_id=BATCH,
        cfg=DriftConfig(mmd=False),
    )
    save_snapshot(tmp_path, "cnn", "site-b", result.snapshot)
    save_snapshot(tmp_path, "cnn", "site-b", result.snapshot)
    projects = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(projects) == 1
    assert json.loads((projects[0] / "metadata.json").read_text())["name"] == "cnn"
    runs = list((projects[0] / "snapshots").glob("*.json"))
    assert len(runs) == 2
    run = json.loads(runs[0].read_text())
    assert run["tags"] == ["site-b"] and run["metadata"]["batch_id"] == BATCH
    assert run["name"] == f"site-b batch {BATCH[:12]}"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DriftCheckFailed, match="workspace"):
        save_snapshot(blocker, "cnn", "site-b", result.snapshot)


def test_names_are_checked_before_the_report_runs(reference: Reference) -> None:
    current = batch_features(embed, reference, images(np.random.default_rng(18), 20), None)
    with pytest.raises(InvalidInput, match="batch id"):
        check_drift(
            reference, current, report_id="r", model="cnn", site="a", batch_id="x",
            cfg=DriftConfig(),
        )
    with pytest.raises(InvalidInput, match="invalid name"):
        check_drift(
            reference, current, report_id="r", model="Bad Name", site="a", batch_id=BATCH,
            cfg=DriftConfig(),
        )


def test_the_global_numpy_random_stream_is_left_alone(reference: Reference) -> None:
    current = batch_features(embed, reference, images(np.random.default_rng(19), 50), None)
    np.random.seed(7)
    expected = np.random.random(3)
    np.random.seed(7)
    check(reference, current)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_column_metric_scores_like_evidentlys_value_drift_and_charts_only_drifted_columns(
    reference: Reference,
) -> None:
    rng = np.random.default_rng(10)
    current = batch_features(embed, reference, images(rng, 200, brightness=0.2), None)
    columns = ["img_mean", "img_std"]  # the first drifts under brightness, the second does not
    definition = DataDefinition(numerical_columns=columns)
    data = [Dataset.from_pandas(frame[columns], data_definition=definition) for frame in (current, reference.features)]
    ours = Report([ColumnValueDrift(column=c, threshold=1e-3) for c in columns]).run(*data)
    stock = Report([ValueDrift(column=c, threshold=1e-3) for c in columns]).run(*data)
    assert [r.value for r in ours.metric_results.values()] == [r.value for r in stock.metric_results.values()]
    charts = [sum(w.type == "big_graph" for w in _widgets(r.widget)) for r in ours.metric_results.values()]
    assert charts[0] > 0 and charts[1] == 0


def _widgets(widgets: list) -> list:
    """Every widget, nested ones (tabs, groups) included."""
    out = []
    for w in widgets:
        out.append(w)
        out.extend(_widgets(list(w.widgets) + [t.widget for t in w.tabs]))
    return out


def test_only_what_evidently_raises_becomes_a_failed_check(reference: Reference,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Evidently refusing its input is DriftCheckFailed (the pipeline records drift.failed and goes on); the same
    exception type from clreg's own code is a bug and must surface as itself."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    from clreg.monitor import drift

    column = pd.Series(np.arange(50.0), name="img_mean")
    with pytest.raises(DriftCheckFailed, match="Evidently failed choosing"):
        with drift._evidently("choosing a test"):
            get_stattest(column, column, ColumnType.Numerical, "no-such-test")

    def broken(*_: object) -> None:
        raise KeyError("a bug in clreg")

    monkeypatch.setattr(drift, "_column_verdicts", broken)
    rng = np.random.default_rng(5)
    with pytest.raises(KeyError, match="a bug in clreg"):
        check(reference, batch_features(embed, reference, images(rng, 200), labels(rng, 200)))

"""Drift of one batch against the reference, through Evidently (imported only here and in `monitor.columns`).

Per feature column Evidently picks the test (K-S up to 1,000 reference rows, so the reference is
subsampled to `max_reference_rows`); a p-value column drifts when p < alpha / n_columns (Bonferroni, the
family-wise rule that caught mild shifts at few false alarms), a distance-scored column at Evidently's
own threshold. The label gets a two-sample chi-square test (registered with Evidently), the PCA
embedding columns an MMD test (called directly: Evidently's embedding metric spends most of its time on
a t-SNE plot). One lean Report.run (a drifted
column count plus one ValueDrift per column, each with the threshold we apply; `monitor.columns` draws
charts only for drifted columns) gives both the verdicts
and the HTML page, so the page and the findings always agree.
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently sends telemetry unless told not to.

import math
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.errors import EvidentlyError
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod
from evidently.legacy.tests.base_test import TestStatus
from evidently.metrics import DriftedColumnsCount
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import chi2_contingency

from clreg.monitor.columns import ColumnValueDrift
from clreg.monitor.errors import DriftCheckFailed, InvalidInput
from clreg.monitor.features import LABEL_COLUMN, Reference
from clreg.monitor.findings import ColumnTest, DriftFindings

# Tests whose score is a p-value (drift when small); every other method scores a distance (drift when
# large). Evidently's defaults (K-S, chi-square, z up to 1,000 reference rows) are all here.
P_VALUE_METHODS = frozenset(
    {
        "ks",
        "chisquare",
        "chisquare_2sample",
        "z",
        "t_test",
        "anderson",
        "cramer_von_mises",
        "mannw",
        "fisher_exact",
        "g_test",
    }
)
MMD_COLUMN = "embedding"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as the registry's names
BATCH_ID = re.compile(r"^[0-9a-f]{64}$")  # a sha256 hex digest
LABEL_TEST = "chisquare_2sample"
# Exceptions that escape Evidently (and the numpy/scipy/sklearn code under it) on bad data. Caught around calls
# into Evidently only (`_evidently`): the same exception from clreg's own code is a bug and stays what it is.
_EVIDENTLY_ERRORS = (
    EvidentlyError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    np.linalg.LinAlgError,
)


def _two_sample_chisquare(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    """Chi-square test of homogeneity on the 2 x classes count table: p-value and whether p < threshold.

    Evidently's own "chisquare" takes the reference shares as exact and so ignores the reference's
    sampling noise: with 1,000 rows on each side its p-values are far too small (12% false alarms at a
    nominal 1% on four classes, simulated; 3.8% at 600 vs 200 rows). The 2 x classes table counts both.
    """
    table = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0).to_numpy().T
    if table.shape[1] < 2:  # one class on both sides: nothing can have shifted
        return 1.0, False
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return p_value, p_value < threshold


# Registered once at import so the label test runs inside the Evidently report (and shows on its page).
register_stattest(
    StatTest(
        name=LABEL_TEST,
        display_name="two-sample chi-square p_value",
        allowed_feature_types=[ColumnType.Categorical],
    ),
    default_impl=_two_sample_chisquare,
)


class DriftConfig(BaseModel):
    """How strict the drift check is, and how much data it looks at."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)  # family-wise over all feature columns
    label_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    mmd: bool = True
    mmd_bootstrap: bool = True  # threshold = the quantile of 100 bootstrap MMDs within the reference
    # 0.95 let MMD alone flag 5% of unchanged digit batches on top of the column tests (bench/drift.py);
    # 0.99 keeps the whole check near the 1% family-wise level of the column tests.
    mmd_quantile: float = Field(default=0.99, gt=0.0, lt=1.0)
    mmd_threshold: float = Field(default=0.015, gt=0.0)  # used only without bootstrap
    # Per side; the kernel matrix and Evidently's 100 bootstraps grow with its square (500 rows: 0.5 s a check).
    mmd_max_rows: int = Field(default=300, ge=2)
    # <= 1,000 keeps Evidently on K-S p-values; above it, normed Wasserstein at 0.1 flags most columns of
    # an unchanged 100-row batch.
    max_reference_rows: int = Field(default=1000, ge=2)
    seed: int = 0


@dataclass(frozen=True)
class DriftCheck:
    """Everything one check produced: its findings, Evidently's HTML page, and its snapshot for a workspace."""

    findings: DriftFindings
    html: str
    snapshot: Snapshot


@contextmanager
def _quiet_constant_columns() -> Iterator[None]:
    """Hide the divide-by-zero RuntimeWarnings constant columns raise inside the statistical tests."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"(evidently|numpy|scipy|sklearn)(\.|$)")
        yield


@contextmanager
def _evidently(doing: str) -> Iterator[None]:
    """Around one call into Evidently: what it raises on bad data becomes DriftCheckFailed."""
    try:
        yield
    except _EVIDENTLY_ERRORS as e:
        raise DriftCheckFailed(f"Evidently failed {doing}: {e}") from e


def _sample(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most `limit` rows, drawn without replacement and in their original order."""
    if len(frame) <= limit:
        return frame.reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _choose_test(reference: pd.Series, current: pd.Series, n_columns: int, cfg: DriftConfig) -> tuple[str, float]:
    """Evidently's default test for a numeric column, and the threshold our family-wise rule gives it."""
    with _evidently(f"choosing a test for column {reference.name!r}"):
        test = get_stattest(reference, current, ColumnType.Numerical, None)
    return test.name, cfg.alpha / n_columns if test.name in P_VALUE_METHODS else test.default_threshold


def _metrics(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], label: bool, cfg: DriftConfig
) -> tuple[list[Any], dict[str, str]]:
    """The lean report (a drifted-column count plus one ValueDrift per column and the label), and each test's name.

    The method is left for Evidently to resolve (it picks the same test from the same data): naming it
    would fail for low-cardinality numeric columns, whose default z/chi-square tests are registered for
    categorical columns only. Only the threshold is ours.
    """
    chosen = {c: _choose_test(ref[c], cur[c], len(columns), cfg) for c in columns}
    # The count's own test fails as soon as one column drifts: the same "any column" rule as ours.
    count = DriftedColumnsCount(
        columns=columns,
        per_column_threshold={c: threshold for c, (_, threshold) in chosen.items()},
        drift_share=0.5 / len(columns),
    )
    metrics: list[Any] = [count, *(ColumnValueDrift(column=c, threshold=threshold)
                                   for c, (_, threshold) in chosen.items())]
    methods = {c: name for c, (name, _) in chosen.items()}
    if label:
        metrics.append(ColumnValueDrift(column=LABEL_COLUMN, method=LABEL_TEST, threshold=cfg.label_alpha))
        methods[LABEL_COLUMN] = LABEL_TEST
    return metrics, methods


def _column_verdicts(snapshot: Snapshot, methods: dict[str, str]) -> dict[str, ColumnTest]:
    """Each ValueDrift's score and Evidently's pass/fail, keyed by column."""
    verdicts: dict[str, ColumnTest] = {}
    for test in snapshot.tests_results:
        params = test.metric_config.params
        if not params.get("type", "").endswith(":ColumnValueDrift"):
            continue
        column = str(params["column"])
        if test.status not in (TestStatus.SUCCESS, TestStatus.FAIL):
            raise DriftCheckFailed(f"Evidently could not test column {column!r}: {test.description}")
        score = float(snapshot.metric_results[test.metric_config.metric_id].value)
        if not math.isfinite(score):  # e.g. a z-test on a column constant in both: no evidence either way
            score = 1.0 if methods[column] in P_VALUE_METHODS else 0.0
        verdicts[column] = ColumnTest(
            column=column,
            method=methods[column],
            score=score,
            threshold=float(params["threshold"]),
            drifted=test.status == TestStatus.FAIL,
        )
    return verdicts


def _mmd(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], cfg: DriftConfig) -> ColumnTest | None:
    """Embedding MMD on the PCA columns; None where it cannot be computed or is switched off."""
    if not cfg.mmd or not columns or len(cur) < 2:
        return None
    ref_rows = _sample(ref[columns], cfg.mmd_max_rows, cfg.seed)
    cur_rows = _sample(cur[columns], cfg.mmd_max_rows, cfg.seed + 1)
    method = MMDDriftMethod(
        threshold=cfg.mmd_threshold,
        bootstrap=cfg.mmd_bootstrap,
        quantile_probability=cfg.mmd_quantile,
    )
    # Evidently's bootstrap reseeds numpy's global RNG (np.random.seed): keep the caller's stream intact.
    state = np.random.get_state()
    try:
        with _evidently("computing the embedding MMD"):
            # Current first: swapped arguments silently give a score of 0.
            score, drifted, name = method(cur_rows, ref_rows)
    finally:
        np.random.set_state(state)
    if not math.isfinite(float(score)):  # every embedding identical: the kernel width is zero
        return None
    # With bootstrap the cut-off is a quantile of null MMDs that Evidently does not return: record the quantile.
    threshold = cfg.mmd_quantile if cfg.mmd_bootstrap else cfg.mmd_threshold
    return ColumnTest(column=MMD_COLUMN, method=name, score=float(score), threshold=threshold, drifted=bool(drifted))


def _check_current(ref: Reference, current: pd.DataFrame, model: str, site: str, batch_id: str) -> list[str]:
    """The feature columns to test: the batch must have all of the reference's, finite and numeric."""
    # checked before the expensive part: they tag the snapshot and name the workspace's projects
    bad = [f"invalid name {name!r}: use 1-63 characters of a-z, 0-9, '_' or '-'" for name in (model, site)
           if not NAME.fullmatch(name)]
    bad += [] if BATCH_ID.fullmatch(batch_id) else [f"invalid batch id {batch_id!r}: expected 64 lowercase hex"]
    if bad:
        raise InvalidInput("; ".join(bad))
    columns = ref.feature_columns
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise InvalidInput(f"the batch's feature table lacks reference columns {missing}")
    if len(current) < 1:
        raise InvalidInput("the batch's feature table is empty")
    values = current[columns]
    if not all(pd.api.types.is_numeric_dtype(t) for t in values.dtypes):
        raise InvalidInput("the batch's feature columns must be numeric")
    if not np.isfinite(values.to_numpy(dtype=np.float64)).all():
        raise InvalidInput("the batch's feature table has NaN or infinite values")
    if LABEL_COLUMN in current.columns and not pd.api.types.is_integer_dtype(current[LABEL_COLUMN]):
        raise InvalidInput(f"the {LABEL_COLUMN!r} column must hold integers, got {current[LABEL_COLUMN].dtype}")
    return columns


def _run_report(
    reference: pd.DataFrame, batch: pd.DataFrame, columns: list[str], metadata: dict[str, str], cfg: DriftConfig
) -> tuple[Snapshot, dict[str, ColumnTest]]:
    """The one Report.run over both tables, and its verdict per column (label included)."""
    label = LABEL_COLUMN in batch.columns
    definition = DataDefinition(numerical_columns=columns, categorical_columns=[LABEL_COLUMN] if label else [])
    metrics, methods = _metrics(reference, batch, columns, label, cfg)
    with _evidently(f"on batch {metadata['batch_id'][:12]} of {metadata['model']}/{metadata['site']}"):
        report = Report(metrics, include_tests=True, metadata=metadata, tags=[metadata["site"]])
        snapshot = report.run(
            Dataset.from_pandas(batch, data_definition=definition),
            Dataset.from_pandas(reference[batch.columns], data_definition=definition),
        )
    return snapshot, _column_verdicts(snapshot, methods)


def check_drift(
    ref: Reference,
    current: pd.DataFrame,
    *,
    report_id: str,
    model: str,
    site: str,
    batch_id: str,
    cfg: DriftConfig,
    render: bool = True,
) -> DriftCheck:
    """Test one batch's features against the reference; the findings, the HTML page ("" unless render) and the
    snapshot (tagged with the model, site, batch and report id).

    Raises:
        InvalidInput: a bad name or batch id, or a feature table without the reference's columns or rows.
        DriftCheckFailed: Evidently raised (the cause is chained).
    """
    started = time.perf_counter()
    columns = _check_current(ref, current, model, site, batch_id)
    reference = _sample(ref.features, cfg.max_reference_rows, cfg.seed)
    label = [LABEL_COLUMN] if LABEL_COLUMN in current.columns else []
    batch = current[columns + label].reset_index(drop=True)
    metadata = {"model": model, "site": site, "batch_id": batch_id, "report_id": report_id}
    with _quiet_constant_columns():
        snapshot, verdicts = _run_report(reference, batch, columns, metadata, cfg)
        mmd = _mmd(reference, batch, ref.embedding_columns, cfg)
        # The page is ~4.5 MB (Evidently inlines its JS bundle): callers that only need the verdict skip it.
        with _evidently("rendering the report page"):
            html = snapshot.get_html_str(as_iframe=False) if render else ""
    column_drifts = [verdicts[c] for c in columns]
    label_drift = verdicts.get(LABEL_COLUMN)
    feature_drift = any(c.drifted for c in column_drifts)
    findings = DriftFindings(
        samples=len(current),
        columns=column_drifts,
        drifted_share=sum(c.drifted for c in column_drifts) / len(column_drifts),
        feature_drift=feature_drift,
        label_drift=label_drift,
        embedding_mmd=mmd,
        drift=feature_drift or any(d is not None and d.drifted for d in (label_drift, mmd)),
        seconds=time.perf_counter() - started,
    )
    return DriftCheck(findings=findings, html=html, snapshot=snapshot)


def save_snapshot(workspace_dir: Path, model: str, site: str, snapshot: Snapshot) -> None:
    """Add a check's snapshot to a local Evidently workspace (one project per model, tagged by site) for `evidently ui`.

    Raises:
        DriftCheckFailed: Evidently could not write the workspace (the cause is chained).
    """
    # Imported here: the workspace module pulls in Evidently's web service stack (litestar), which the
    # drift check itself never needs.
    from evidently.ui.workspace import Workspace

    try:
        workspace = Workspace(str(workspace_dir))
        projects = workspace.search_project(model)
        if projects:
            project = projects[0]
        else:
            project = workspace.create_project(model, description=f"clreg drift checks of {model}")
        # check_drift tagged the snapshot by site; the run's name repeats site and batch for the UI's list.
        batch_id = str(snapshot.report.metadata.get("batch_id", ""))
        workspace.add_run(project.id, snapshot, name=f"{site} batch {batch_id[:12]}".strip())
    except (*_EVIDENTLY_ERRORS, OSError) as e:
        raise DriftCheckFailed(f"could not save the snapshot to the Evidently workspace {workspace_dir}: {e}") from e

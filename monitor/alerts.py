"""The drift alert's content: the verdict, its strongest evidence and a link to the full report.

It becomes the data of the `drift.alert` event; webhook subscribers receive it with that event.
"""

from __future__ import annotations

from typing import Any

from clreg.registry.findings import ColumnDrift, DriftReport


def _test(drift: ColumnDrift | None) -> dict[str, Any] | None:
    """One test's outcome for the payload."""
    if drift is None:
        return None
    return {"method": drift.method, "score": drift.score, "threshold": drift.threshold, "drifted": drift.drifted}


def _signals(report: DriftReport) -> list[str]:
    """Which tests found drift: "features" (per-column), "label" (prior shift), "embedding" (MMD)."""
    flags = {"features": report.feature_drift,
             "label": report.label_drift is not None and report.label_drift.drifted,
             "embedding": report.embedding_mmd is not None and report.embedding_mmd.drifted}
    return [name for name, flagged in flags.items() if flagged]


def alert_payload(report: DriftReport, report_url: str) -> dict[str, Any]:
    """The JSON body of a drift alert: the verdict, its strongest evidence, and a link to the full report."""
    return {
        "kind": "drift",
        "model": report.model,
        "site": report.site,
        "batch_id": report.batch_id,
        "report_id": report.id,
        "reference_version": report.reference_version,
        "samples": report.samples,
        "verdict": "drift" if report.drift else "no_drift",
        "signals": _signals(report),
        "feature_drift": report.feature_drift,
        "top_features": report.top_columns(),
        "drifted_share": report.drifted_share,
        "label_drift": _test(report.label_drift),
        "embedding_mmd": _test(report.embedding_mmd),
        "link": report_url,
        "created_at": report.created_at,
    }

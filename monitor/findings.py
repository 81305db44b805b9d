"""What one drift check found, as figures: each column's test and the verdicts.

The monitor's own result, with nothing of where it is stored: the daemon stores it as a registry DriftReport
beside the batch, model and reference version it was checked for (so `monitor` imports no other clreg package).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnTest:
    """One column's test: its method, its score (a p-value or a distance, by method) against the threshold."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftFindings:
    """A batch's features against the reference: per-column tests, the label's and the embedding's, the verdict."""

    samples: int
    columns: list[ColumnTest]
    drifted_share: float
    feature_drift: bool
    label_drift: ColumnTest | None
    embedding_mmd: ColumnTest | None
    drift: bool
    seconds: float

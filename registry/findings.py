"""What a version is judged by: drift reports of its batches, gate reports of its candidates, its calibration.

Stored as data (JSON records and artifacts) by the registry; produced by the daemon from the monitor's and the
learner's figures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clreg.registry.records import BatchId, Metric, Name, Record, now


class ColumnDrift(Record):
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


class DriftReport(Record):
    id: str
    model: Name
    site: Name
    batch_id: BatchId
    reference_version: int | None
    samples: int
    columns: list[ColumnDrift] = Field(default_factory=list)
    drifted_share: float = 0.0
    feature_drift: bool = False
    label_drift: ColumnDrift | None = None
    embedding_mmd: ColumnDrift | None = None
    drift: bool = False
    seconds: float = 0.0
    html_artifact: str | None = None  # sha256 of the Evidently HTML page
    created_at: float = Field(default_factory=now)


class SiteGate(Record):
    """One site's line in a gate report: both models on the same held-out samples."""

    site: Name
    samples: int
    candidate_accuracy: float
    production_accuracy: float | None
    delta: float | None
    lower_bound: float | None
    best_accuracy: float | None = None  # the best a version has had on this (earlier) site since it was learnt
    new_site: bool
    passed: bool
    # The task metric the line was judged by (None in reports made before it: accuracy), both models' values of it;
    # delta and lower_bound are in its units, positive = candidate better (a cost's fall is positive).
    metric: str | None = None
    candidate_value: float | None = None
    production_value: float | None = None
    best_value: float | None = None  # best_accuracy's counterpart in the metric's units
    se: float | None = None  # the paired change's standard error
    # The smallest change this held-out set distinguishes at the gate's confidence (None: it cannot, or there is
    # nothing to compare with); too small when that exceeds the pooled tolerance; samples_needed: how many more
    # labelled images would bring it down to the tolerance (None: none would, e.g. a tolerance of 0).
    detectable_drop: float | None = None
    too_small: bool = False
    samples_needed: int | None = None
    class_counts: list[int] | None = None  # held-out samples of each class (index = class)
    # The most one of its held-out images moves the metric; a site is judged alone (can reject a candidate by
    # itself) only where fewer than the gate's min_images images cannot make a drop of its site tolerance.
    one_image: float | None = None
    judged_alone: bool = True


class GateReport(Record):
    id: str
    model: Name
    candidate: int
    production: int | None
    tolerance: float  # earlier sites together (the pooled bound)
    confidence: float
    sites: list[SiteGate]
    passed: bool
    reasons: list[str] = Field(default_factory=list)
    site_tolerance: float | None = None  # any one earlier site
    budget: float | None = None  # cumulative, from each earlier site's best since it was learnt
    budget_confidence: float | None = None  # per site, family-wise `confidence` over the earlier sites (Sidak)
    pooled_delta: float | None = None  # mean over earlier sites of the paired change in the metric
    pooled_lower_bound: float | None = None
    metric: str | None = None  # the task metric judged by, tolerances in its units (None in older reports: accuracy)
    too_small: list[str] = Field(default_factory=list)  # sites whose held-out set cannot see the tolerance
    pooled_only: list[str] = Field(default_factory=list)  # earlier sites too small to be judged alone
    min_images: int | None = None  # no site rejects alone for a drop fewer held-out images could make
    # Per site and metric, the best held-out value of any version in the candidate's line, the candidate included:
    # once it is production, the next gate's forgetting budget reads it here instead of walking the line.
    best: dict[str, dict[str, float]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)  # what the verdict cannot see (never a reason to reject)
    created_at: float = Field(default_factory=now)


class SiteCalibration(Record):
    """Temperature scaling for one site: the temperature served, and its effect on the held-out set.

    ece and nll are at temperature 1; the *_calibrated figures are cross-fitted (each half of the held-out
    set scored with a temperature fitted on the other half), so they are not flattered by the fit.
    """

    temperature: float = Field(gt=0)
    samples: int = Field(ge=1)
    ece: float
    ece_calibrated: float
    nll: float
    nll_calibrated: float
    # The calibrated probabilities' debiased RMS calibration error over 10 equal-mass bins (not inflated by
    # small bins as ECE is; readiness uses it), and the ECE a perfectly calibrated model would show on this
    # many samples. None in versions made before them.
    error_calibrated: float | None = None
    ece_floor: float | None = None
    # Binary models: each held-out sample's calibrated P(class 1), cross-fitted like the figures above, and
    # its label, so any threshold's sensitivity, specificity, PPV and NPV at this site can be read off.
    scores: list[float] | None = None
    labels: list[int] | None = None
    # Site validation (None in versions made before it): accuracy with its 95% bootstrap interval, each
    # class's sensitivity as (share found, low, high), and the reliability diagram as (mean confidence,
    # accuracy, count) per confidence bin before and after calibration.
    accuracy: float | None = None
    accuracy_interval: tuple[float, float] | None = None
    sensitivity: dict[str, tuple[float, float, float]] | None = None
    reliability_before: list[tuple[float, float, int]] | None = None
    reliability_after: list[tuple[float, float, int]] | None = None
    # The model's task metric when the version was made (Model.task_metric), on the held-out labels and the
    # cross-fitted calibrated probabilities: its value and 95% class-stratified bootstrap interval (None where it is
    # undefined: AUROC of one class), the figure of the best constant answer (every image the same class: the
    # majority's accuracy, AUROC 0.5, the cheaper of flagging all or none), and the held-out count of each class.
    # None in versions made before them: readiness then judges accuracy as it did.
    metric: Metric | None = None
    metric_value: float | None = None
    metric_interval: tuple[float, float] | None = None
    metric_baseline: float | None = None
    class_counts: list[int] | None = None


class Calibration(Record):
    """A version's calibration artifact: one temperature per learnt site, one pooled for any other request."""

    model: Name
    method: Literal["temperature"] = "temperature"
    sites: dict[Name, SiteCalibration]
    pooled: SiteCalibration

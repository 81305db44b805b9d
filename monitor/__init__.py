"""Drift monitoring: image batches -> feature tables -> Evidently drift checks -> DriftReport and alerts.

Imports nothing from `learner`: the caller passes the embedding function (e.g. a model's penultimate layer).
"""

from clreg.monitor.alerts import alert_payload
from clreg.monitor.drift import DriftCheck, DriftConfig, check_drift, save_snapshot
from clreg.monitor.errors import DriftCheckFailed, InvalidInput, InvalidReference, MonitorError
from clreg.monitor.features import (
    IMAGE_STAT_COLUMNS,
    LABEL_COLUMN,
    EmbedFn,
    FeatureConfig,
    Reference,
    batch_features,
    fit_reference,
    image_statistics,
)

__all__ = [
    "IMAGE_STAT_COLUMNS",
    "LABEL_COLUMN",
    "DriftCheck",
    "DriftCheckFailed",
    "DriftConfig",
    "EmbedFn",
    "FeatureConfig",
    "InvalidInput",
    "InvalidReference",
    "MonitorError",
    "Reference",
    "alert_payload",
    "batch_features",
    "check_drift",
    "fit_reference",
    "image_statistics",
    "save_snapshot",
]

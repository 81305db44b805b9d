"""Drift monitoring: image batches -> feature tables -> Evidently drift checks -> their findings.

Imports nothing from `learner`: the caller passes the embedding function (e.g. a model's penultimate layer).
"""

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
from clreg.monitor.findings import ColumnTest, DriftFindings

__all__ = [
    "IMAGE_STAT_COLUMNS",
    "LABEL_COLUMN",
    "ColumnTest",
    "DriftCheck",
    "DriftCheckFailed",
    "DriftConfig",
    "DriftFindings",
    "EmbedFn",
    "FeatureConfig",
    "InvalidInput",
    "InvalidReference",
    "MonitorError",
    "Reference",
    "batch_features",
    "check_drift",
    "fit_reference",
    "image_statistics",
    "save_snapshot",
]

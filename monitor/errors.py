"""The monitor's errors: one root, a few leaves, raised where a caller can act on them.

    MonitorError
    ├── InvalidInput        images, labels, embeddings or a feature table of the wrong shape or values
    ├── InvalidReference    stored arrays that do not describe a Reference
    └── DriftCheckFailed    Evidently could not compute the drift report
"""

from __future__ import annotations


class MonitorError(Exception):
    """Root of every error the monitor package raises."""


class InvalidInput(MonitorError):
    """Images, labels, embeddings or a feature table do not have the shape or values the monitor needs."""


class InvalidReference(MonitorError):
    """Stored reference arrays are missing a key or have inconsistent shapes."""


class DriftCheckFailed(MonitorError):
    """Evidently raised while computing the drift report (the cause is chained)."""

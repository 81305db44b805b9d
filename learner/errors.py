"""Errors raised by the learner package.

LearnerError
 ├── ModelFactoryError    the factory string is malformed, cannot be imported, or builds no usable model
 ├── WeightsError         weight or EWC-state bytes do not load (bad safetensors, wrong keys or shapes)
 ├── DataError            training or evaluation arrays have the wrong shape, dtype or labels
 ├── TrainingFailed       a training run failed (on Ray: task error, worker death, timeout)
 └── TrainingInterrupted  the caller asked a running training to stop (a daemon shutting down); not a failure
"""

from __future__ import annotations


class LearnerError(Exception):
    """Root of every error the learner raises."""


class ModelFactoryError(LearnerError):
    """The model factory could not be resolved or did not build a usable model."""


class WeightsError(LearnerError):
    """Serialized weights or EWC state could not be loaded."""


class DataError(LearnerError):
    """Input arrays do not fit what the model or the metric expects."""


class TrainingFailed(LearnerError):
    """A training run did not complete."""


class TrainingInterrupted(LearnerError):
    """Training was cancelled because its caller is stopping; the work may be resumed later."""

"""Sinks: a summary's statistics logged to experiment trackers (MLflow, Weights & Biases).

The contract (protocol, metric names, pending file, bounded MLflow HTTP) is `maeltrace.sinks.base`,
whose docstring gives the metric names; the trackers load only in their modules,
`maeltrace.sinks.mlflow` and `maeltrace.sinks.wandb`. This package imports no framework.
"""

from __future__ import annotations

from maeltrace.sinks.base import (
    NAMES,
    STATS,
    STATS_FIELDS,
    PendingFile,
    Sink,
    SinkWarning,
    check_arguments,
    metric_name,
    metric_values,
    normalize_prefix,
    pending_entry,
    pending_path,
    warn_failure,
)

__all__ = [
    "NAMES",
    "STATS",
    "STATS_FIELDS",
    "PendingFile",
    "Sink",
    "SinkWarning",
    "check_arguments",
    "metric_name",
    "metric_values",
    "normalize_prefix",
    "pending_entry",
    "pending_path",
    "warn_failure",
]

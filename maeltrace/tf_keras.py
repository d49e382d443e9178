"""Old path of the tf-keras callback, which lives in `maeltrace.integrations.tf_keras`."""

from __future__ import annotations

from maeltrace.integrations.tf_keras import (
    FIT,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    VALIDATION,
    VALIDATION_BATCH,
    TimerCallback,
)

__all__ = [
    "FIT",
    "PREDICT",
    "PREDICT_BATCH",
    "TEST",
    "TEST_BATCH",
    "VALIDATION",
    "VALIDATION_BATCH",
    "TimerCallback",
]

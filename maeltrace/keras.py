"""Old path of the Keras 3 callback, which lives in `maeltrace.integrations.keras`."""

from __future__ import annotations

from maeltrace.integrations.keras import (
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

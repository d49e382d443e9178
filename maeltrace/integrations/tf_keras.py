"""tf-keras (the Keras 2 API) integration: `TimerCallback` as in `maeltrace.keras`."""

from __future__ import annotations

import tf_keras

from maeltrace.integrations._keras_hooks import (
    FIT,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    VALIDATION,
    VALIDATION_BATCH,
    TimerHooks,
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


class TimerCallback(TimerHooks, tf_keras.callbacks.Callback):  # type: ignore[misc]  # untyped base
    """tf-keras callback recording fit, epochs, batches and IO gaps into a `maeltrace.Timer`."""

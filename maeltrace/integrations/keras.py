"""Keras 3 integration: `TimerCallback` times ``model.fit``, ``evaluate`` and ``predict``.

For the Keras 2 API of tf-keras, use `maeltrace.integrations.tf_keras.TimerCallback`.
"""

from __future__ import annotations

import keras

from maeltrace.integrations._keras_hooks import (
    FIT,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    TimerHooks,
)

__all__ = ["FIT", "PREDICT", "PREDICT_BATCH", "TEST", "TEST_BATCH", "TimerCallback"]


class TimerCallback(TimerHooks, keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """Keras 3 callback recording fit, epochs, batches and IO gaps into a `maeltrace.Timer`.

    Example: ``model.fit(x, y, callbacks=[TimerCallback(tmr, gpu=True)])``; see `TimerHooks`
    for what is timed. With ``gpu=True`` the device clock is that of Keras's backend (jax,
    torch or tensorflow; the CPU clock for another backend), unless the timer names one.
    """

    def device_framework(self) -> str:
        """The clock of Keras's backend: ``jax``, ``torch`` or ``tensorflow``, else ``cpu``."""
        backend = str(keras.backend.backend())
        return backend if backend in ("jax", "torch", "tensorflow") else "cpu"

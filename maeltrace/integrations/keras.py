"""Keras 3 integration: `TimerCallback` times ``model.fit``, ``evaluate`` and ``predict``.

For the Keras 2 API of tf-keras, use `maeltrace.integrations.tf_keras.TimerCallback`.
"""

from __future__ import annotations

from typing import Any

import keras

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


class TimerCallback(TimerHooks, keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """Keras 3 callback recording fit, epochs, batches and IO gaps into a `maeltrace.Timer`.

    Example: ``model.fit(x, y, callbacks=[TimerCallback(tmr, gpu=True)])``; see `TimerHooks`
    for what is timed. With ``gpu=True`` the device clock is that of Keras's backend (jax,
    torch or tensorflow; the CPU clock for another backend), unless the timer names one.

    On JAX, which dispatches asynchronously, a batch's device time runs until the step's
    outputs are ready: the callback waits for the ``logs`` and the new model state Keras has
    when the batch ends. This costs the loop nothing: Keras converts the logs to Python numbers
    before a callback that overrides a batch's end sees them, which already waits for the step.
    """

    def device_framework(self) -> str:
        """The clock of Keras's backend: ``jax``, ``torch`` or ``tensorflow``, else ``cpu``."""
        backend = str(keras.backend.backend())
        return backend if backend in ("jax", "torch", "tensorflow") else "cpu"

    def step_outputs(self, logs: Any) -> object:
        """The ``logs`` and, on JAX, the state the step returned (the new weights, optimizer
        and metric variables), which Keras keeps on the model for callbacks until it syncs."""
        return (logs, getattr(self.model, "_jax_state", None))

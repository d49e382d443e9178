"""The region keys every trainer integration records, defined once (Keras, Lightning, HF)."""

from __future__ import annotations

from typing import Final

from maeltrace.keys import TimeType

__all__ = [
    "BACKWARD",
    "BATCH",
    "EPOCH",
    "FIT",
    "FORWARD",
    "IO",
    "OPTIMIZER",
    "PREDICT",
    "PREDICT_BATCH",
    "TEST",
    "TEST_BATCH",
    "VALIDATION",
    "VALIDATION_BATCH",
]

EPOCH: Final = TimeType.EPOCH
"""Each training epoch."""
IO: Final = TimeType.IO
"""The wait for each training batch: from the previous batch's end (or the epoch's start) to
the batch's start. The Hugging Face Trainer fetches an optimizer step's micro-batches together:
there, one wait per optimizer step."""
BATCH: Final = TimeType.BATCH
"""One data-loader batch of training: its forward, backward and, where one falls on it, the
optimizer step."""
FORWARD: Final = TimeType.FORWARD
"""The training step's forward pass, including the loss."""
BACKWARD: Final = TimeType.BACKWARD
"""The backward pass of one batch."""
OPTIMIZER: Final = "optimizer"
"""Each optimizer step: with gradient accumulation over k batches, one per k batches."""
FIT: Final = "fit"
"""A whole ``fit`` call (Keras)."""
VALIDATION: Final = "validation"
"""Each validation pass: Lightning's, the Hugging Face Trainer's ``evaluate``, and Keras's inside
``fit`` (``validation_data``)."""
VALIDATION_BATCH: Final = "validation_batch"
"""Each validation batch."""
TEST: Final = "test"
"""Each test or evaluation pass outside training: Lightning's ``test``, Keras's ``evaluate``."""
TEST_BATCH: Final = "test_batch"
"""Each test or evaluation batch outside training."""
PREDICT: Final = "predict"
"""Each prediction pass."""
PREDICT_BATCH: Final = "predict_batch"
"""Each prediction batch."""

"""What the Keras callbacks time, shared by the Keras 3 and tf-keras classes."""

from __future__ import annotations

from typing import Any

from maeltrace.integrations.vocabulary import (
    BATCH,
    EPOCH,
    FIT,
    IO,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
)
from maeltrace.timer import Timer

__all__ = ["FIT", "PREDICT", "PREDICT_BATCH", "TEST", "TEST_BATCH", "TimerHooks"]


class TimerHooks:
    """The callback methods: fit, epochs, train batches, the IO gap before each train batch,
    evaluation and prediction passes and their batches.

    The IO row is the time between the end of one train batch (or the epoch's start) and the
    start of the next: the wait for data, plus Keras' own per-batch work. The wait after an
    epoch's last batch is not recorded, as with `Timer.iterate`. Batches (train, test and
    predict) are gpu regions when ``gpu`` is true.

    Args:
        timer: the timer to record into.
        gpu: also measure batches on the device clock: that of the framework Keras computes
            on (`device_framework`), unless the timer names another.
    """

    def __init__(self, timer: Timer, gpu: bool = False) -> None:
        if not isinstance(timer, Timer):
            raise TypeError(f"TimerCallback needs a maeltrace Timer, not {type(timer).__name__}")
        super().__init__()
        self.timer = timer
        self.gpu = bool(gpu)

    def _stop_io(self) -> None:
        if self.timer.is_open(IO):
            self.timer.cancel(IO)

    def device_framework(self) -> str:
        """The device clock this callback's Keras computes on: TensorFlow's here; the Keras 3
        callback asks Keras for its backend."""
        return "tensorflow"

    def _choose_clock(self) -> None:
        if self.gpu:
            self.timer.use_device(prefer=self.device_framework())

    def on_train_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self.timer.start(FIT)

    def on_train_end(self, logs: Any = None) -> None:
        self._stop_io()
        self.timer.end(FIT)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.timer.start(EPOCH)
        self.timer.start(IO)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._stop_io()
        self.timer.end(EPOCH)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self.timer.is_open(IO):
            self.timer.end(IO)
        self.timer.start(BATCH, gpu=self.gpu)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.timer.end(BATCH)
        self.timer.start(IO)

    def on_test_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self._stop_io()
        self.timer.start(TEST)

    def on_test_end(self, logs: Any = None) -> None:
        self.timer.end(TEST)

    def on_test_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.timer.start(TEST_BATCH, gpu=self.gpu)

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self.timer.end(TEST_BATCH)

    def on_predict_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self.timer.start(PREDICT)

    def on_predict_end(self, logs: Any = None) -> None:
        self.timer.end(PREDICT)

    def on_predict_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.timer.start(PREDICT_BATCH, gpu=self.gpu)

    def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
        self.timer.end(PREDICT_BATCH)

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
    VALIDATION,
    VALIDATION_BATCH,
)
from maeltrace.timer import Timer

__all__ = [
    "FIT",
    "PREDICT",
    "PREDICT_BATCH",
    "TEST",
    "TEST_BATCH",
    "VALIDATION",
    "VALIDATION_BATCH",
    "TimerHooks",
]


class TimerHooks:
    """The callback methods: fit, epochs, train batches, the IO gap before each train batch,
    evaluation and prediction passes and their batches.

    The IO row is the time between the end of one train batch (or the epoch's start) and the
    start of the next: the wait for data, plus Keras' own per-batch work. The wait after an
    epoch's last batch is not recorded, as with `Timer.iterate`. Validation inside ``fit`` is
    recorded as `VALIDATION` and `VALIDATION_BATCH`; ``evaluate`` called on its own as `TEST`
    and `TEST_BATCH`. Batches (train, evaluation and predict) are gpu regions when ``gpu`` is
    true.

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
        self._eval, self._eval_batch = TEST, TEST_BATCH
        self._block_outputs = False

    def _stop_io(self) -> None:
        if self.timer.is_open(IO):
            self.timer.cancel(IO)

    def device_framework(self) -> str:
        """The device clock this callback's Keras computes on: TensorFlow's here; the Keras 3
        callback asks Keras for its backend."""
        return "tensorflow"

    def step_outputs(self, logs: Any) -> object:
        """What a batch's device time waits for on a clock that blocks on outputs (JAX's):
        here the ``logs`` Keras hands the batch's end; the Keras 3 callback adds the step's
        new state."""
        return logs

    def _choose_clock(self) -> None:
        if self.gpu:
            clock = self.timer.use_device(prefer=self.device_framework())
            # Only JAX's clock needs the outputs; the others time the device themselves.
            self._block_outputs = clock.name.startswith("jax")

    def _end_batch(self, key: str, logs: Any) -> None:
        if self._block_outputs:
            self.timer.region(key, gpu=True).block(self.step_outputs(logs))
        self.timer.end(key)

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
        self._end_batch(BATCH, logs)
        self.timer.start(IO)

    def on_test_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self._stop_io()
        # Keras validates through the evaluation hooks, called inside fit's.
        if self.timer.is_open(FIT):
            self._eval, self._eval_batch = VALIDATION, VALIDATION_BATCH
        else:
            self._eval, self._eval_batch = TEST, TEST_BATCH
        self.timer.start(self._eval)

    def on_test_end(self, logs: Any = None) -> None:
        self.timer.end(self._eval)

    def on_test_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.timer.start(self._eval_batch, gpu=self.gpu)

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self._end_batch(self._eval_batch, logs)

    def on_predict_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self.timer.start(PREDICT)

    def on_predict_end(self, logs: Any = None) -> None:
        self.timer.end(PREDICT)

    def on_predict_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.timer.start(PREDICT_BATCH, gpu=self.gpu)

    def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
        self._end_batch(PREDICT_BATCH, logs)

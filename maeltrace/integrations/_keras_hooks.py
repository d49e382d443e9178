"""What the Keras callbacks time, shared by the Keras 3 and tf-keras classes."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from maeltrace.integrations._batch_size import positive_or_none
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

_TRUSTED_ADAPTERS = ("ArrayDataAdapter", "TFDatasetAdapter")
"""The Keras 3 data adapters whose batch sizes are certain: arrays, cut by Keras into batches
of ``batch_size`` and one last, smaller batch; and a ``tf.data`` dataset whose batch dimension
is static (batched with ``drop_remainder=True``), so every batch has it. The others guess
(a torch ``DataLoader``'s ignores ``drop_last`` and its sampler) or do not know."""


class BatchSizes:
    """The items in each batch of one Keras pass (fit's training, an evaluation or a
    prediction).

    Args:
        size: the items in a batch.
        batches: the batches in one pass over the data, when the last is smaller.
        last: the items in that last batch.
    """

    __slots__ = ("batches", "last", "size")

    def __init__(self, size: int, batches: int | None = None, last: int | None = None) -> None:
        self.size = size
        self.batches = batches
        self.last = last

    def items(self, first: int, last: int) -> int:
        """The items in steps ``first`` to ``last`` (one callback batch: several steps with
        ``steps_per_execution``), the data's last batch counted at its size."""
        if self.batches is None or self.last is None:
            return self.size * (last - first + 1)
        last = min(last, self.batches - 1)  # a last execution cut short by the data's end
        if last < first:
            return 0
        full = last - first + 1
        if last == self.batches - 1:
            return self.size * (full - 1) + self.last
        return self.size * full

    @classmethod
    def of(cls, epoch_iterator: Any) -> BatchSizes | None:
        """What Keras's epoch iterator knows for certain about its batches, or None."""
        adapter: Any = getattr(epoch_iterator, "data_adapter", None)
        if type(adapter).__name__ not in _TRUSTED_ADAPTERS:
            return None
        try:
            size = adapter.batch_size
            partial = adapter.has_partial_batch
            batches = adapter.num_batches
            last = adapter.partial_batch_size
        except Exception:  # an adapter that cannot say counts nothing, and never stops fit
            return None
        if not isinstance(size, int) or size <= 0:
            return None  # a dataset batched without drop_remainder: its batches vary
        if not partial:
            return cls(size)
        if getattr(epoch_iterator, "steps_per_epoch", None):
            # Epochs then run on from where the last stopped: step numbers are no positions.
            return None
        if isinstance(batches, int) and isinstance(last, int) and 0 < last < size:
            return cls(size, batches, last)
        return None


def _calling_epoch_iterator() -> Any:
    """The epoch iterator of the Keras 3 ``fit``, ``evaluate`` or ``predict`` whose callbacks
    are running (a local of each backend's trainer), or None (tf-keras has none).

    Callbacks are handed no data; this runs once per pass.
    """
    frame: FrameType | None = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        found = frame.f_locals.get("epoch_iterator")
        if found is not None and hasattr(found, "data_adapter"):
            return found
        frame = frame.f_back
    return None


class TimerHooks:
    """The callback methods: fit, epochs, train batches, the IO gap before each train batch,
    evaluation and prediction passes and their batches.

    The IO row is the time between the end of one train batch (or the epoch's start) and the
    start of the next: the wait for data, plus Keras' own per-batch work. The wait after an
    epoch's last batch is not recorded, as with `Timer.iterate`. Validation inside ``fit`` is
    recorded as `VALIDATION` and `VALIDATION_BATCH`; ``evaluate`` called on its own as `TEST`
    and `TEST_BATCH`. Batches (train, evaluation and predict) are gpu regions when ``gpu`` is
    true.

    Each batch region (train, evaluation and predict) counts its items (samples,
    ``Timer.add_items``) where the batch size is certain: Keras 3 tells it for arrays and
    tensors (the last, smaller batch at its true size; with ``steps_per_epoch`` too, unless the
    data ends on a smaller batch) and for a ``tf.data`` dataset with a static batch dimension
    (batched with ``drop_remainder=True``). For other data (a dataset batched without
    ``drop_remainder``, a generator, a ``PyDataset``, a torch ``DataLoader``) and for tf-keras,
    Keras does not know: the batches count ``batch_size`` items when it is given, a last,
    smaller batch included, else nothing.

    Args:
        timer: the timer to record into.
        gpu: also measure batches on the device clock: that of the framework Keras computes
            on (`device_framework`), unless the timer names another.
        batch_size: the items in every batch, for data whose batch size Keras does not know;
            never needed where it does, and then not used.

    Raises:
        TypeError: ``timer`` is not a maeltrace Timer, or ``batch_size`` not a whole number.
        ValueError: ``batch_size`` is not positive.
    """

    def __init__(self, timer: Timer, gpu: bool = False, *, batch_size: int | None = None) -> None:
        if not isinstance(timer, Timer):
            raise TypeError(f"TimerCallback needs a maeltrace Timer, not {type(timer).__name__}")
        super().__init__()
        self.timer = timer
        self.gpu = bool(gpu)
        self.batch_size = positive_or_none(batch_size, "batch_size")
        self._eval, self._eval_batch = TEST, TEST_BATCH
        self._block_outputs = False
        # The items of each kind of pass's batches, and where its current batch began.
        self._sizes: dict[str, BatchSizes | None] = {}
        self._first_step: dict[str, int] = {}

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

    def _find_sizes(self, kind: str) -> None:
        """Learns the batch sizes of the pass beginning now (called from its begin hook)."""
        sizes = BatchSizes.of(_calling_epoch_iterator())
        if sizes is None and self.batch_size is not None:
            sizes = BatchSizes(self.batch_size)
        self._sizes[kind] = sizes

    def _begin_batch(self, kind: str, key: str, step: int) -> None:
        self._first_step[kind] = step
        self.timer.start(key, gpu=self.gpu)

    def _end_batch(self, key: str, logs: Any, kind: str = "", step: int = 0) -> None:
        sizes = self._sizes.get(kind)
        if sizes is not None:
            items = sizes.items(self._first_step.get(kind, step), step)
            if items:
                self.timer.add_items(key, items=items)
        if self._block_outputs:
            self.timer.region(key, gpu=True).block(self.step_outputs(logs))
        self.timer.end(key)

    def on_train_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self._find_sizes(FIT)
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
        self._begin_batch(FIT, BATCH, batch)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._end_batch(BATCH, logs, FIT, batch)
        self.timer.start(IO)

    def on_test_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self._find_sizes(TEST)
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
        self._begin_batch(TEST, self._eval_batch, batch)

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self._end_batch(self._eval_batch, logs, TEST, batch)

    def on_predict_begin(self, logs: Any = None) -> None:
        self._choose_clock()
        self._find_sizes(PREDICT)
        self.timer.start(PREDICT)

    def on_predict_end(self, logs: Any = None) -> None:
        self.timer.end(PREDICT)

    def on_predict_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._begin_batch(PREDICT, PREDICT_BATCH, batch)

    def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
        self._end_batch(PREDICT_BATCH, logs, PREDICT, batch)

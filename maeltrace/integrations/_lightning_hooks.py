"""What the Lightning callbacks time, shared by the lightning and pytorch_lightning classes."""

from __future__ import annotations

import warnings
from typing import Any

from maeltrace.errors import SinkWarning
from maeltrace.integrations._batch_size import leading_size, numel_of
from maeltrace.integrations._callback_timer import CallbackTimer
from maeltrace.integrations._epoch_logs import EpochLog
from maeltrace.integrations.vocabulary import (
    BACKWARD,
    BATCH,
    EPOCH,
    FORWARD,
    IO,
    OPTIMIZER,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    VALIDATION,
    VALIDATION_BATCH,
)
from maeltrace.keys import Key
from maeltrace.timer import Timer

__all__ = ["TimerHooks"]

_TRAIN_STEP = (OPTIMIZER, BACKWARD, FORWARD, BATCH)
"""The regions inside a training batch, innermost first."""


class TimerHooks(CallbackTimer):
    """The callback methods: training epochs, the IO wait before each batch, each batch's
    forward, backward and optimizer step, and validation, test and prediction passes and their
    batches (`maeltrace.integrations.vocabulary` names them).

    ``forward`` runs from the batch's start to the first of ``zero_grad`` and the backward pass,
    so it holds ``training_step`` and its loss; ``optimizer`` from Lightning's
    ``on_before_optimizer_step`` to the batch's end (the step itself and a per-step learning
    rate scheduler), so with ``accumulate_grad_batches=k`` there is one per k batches. The IO
    wait after an epoch's last batch is not a wait for data: it is cancelled before validation
    or the epoch's end opens anything, so no region ever has a cancelled parent; after a
    validation pass inside the epoch (``val_check_interval``) the wait starts again. Lightning's
    sanity-check validation is not timed.

    With ``timer=None`` the callback builds its own `Timer` in ``setup``, once the trainer's
    process group is up, with the run id all ranks share (`maeltrace.shared_run_id`), so that
    under DDP each rank records into the same run.

    At each training epoch's end every logger of the trainer (``trainer.loggers``: MLflow,
    CSV, TensorBoard, W&B, ...) gets that epoch's statistics through ``log_metrics`` at the
    trainer's global step, named ``maeltrace/<key>[/gpu]/epoch/{mean,count}``
    (`maeltrace.integrations._epoch_logs.EpochLog`), so they never meet Lightning's own
    ``epoch`` or the module's metrics. A logger that fails gives one `maeltrace.SinkWarning`
    per callback; training goes on.

    Each batch region (train, validation, test and predict) counts its items
    (``Timer.add_items``): the leading dimension of the first torch tensor in the batch (a
    tensor, or tuples, lists and dicts of them), the epoch's last, smaller batch at its size; a
    batch with no tensor counts nothing. Only shapes are read, never values: counting never
    waits for the GPU.

    Args:
        timer: the timer to record into; default one of the callback's own.
        gpu: also measure batches, forward, backward and optimizer steps on the device clock
            (torch's, unless the timer names another).
        tokens: the entry of a dict batch whose tensor's elements each batch counts as its
            tokens, such as ``"input_ids"``: padded tokens, since the attention mask's sum
            would wait for the GPU. Default: no tokens.
    """

    def __init__(
        self, timer: Timer | None = None, *, gpu: bool = False, tokens: str | None = None
    ) -> None:
        self._hold(timer)
        super().__init__()
        self.gpu = bool(gpu)
        if tokens is not None and not isinstance(tokens, str):
            raise TypeError(f"tokens must name a batch entry, not {type(tokens).__name__}")
        self.tokens = tokens
        self._sanity_checking = False
        self._in_train_epoch = False
        self._epoch_log = EpochLog()
        self._logger_warned = False

    def _end_open(self, *keys: Key) -> None:
        timer = self.timer
        for key in keys:
            if timer.is_open(key):
                timer.end(key)

    def _start_batch(self, key: Key, batch: Any) -> None:
        """Opens the batch region ``key`` with the batch's items and tokens."""
        timer = self.timer
        timer.start(key, gpu=self.gpu)
        items = leading_size(batch)
        tokens = numel_of(batch, self.tokens) if self.tokens is not None else None
        if items or tokens:
            timer.add_items(key, items=items or 0, tokens=tokens or 0)

    def _cancel_io(self) -> None:
        if self.timer.is_open(IO):
            self.timer.cancel(IO)

    def _log_epoch(self, trainer: Any) -> None:
        """Hands the epoch's statistics to the trainer's loggers; never raises."""
        metrics = self._epoch_log.metrics(self.timer)
        if not metrics:
            return
        for logger in getattr(trainer, "loggers", None) or ():
            try:
                logger.log_metrics(metrics, step=trainer.global_step)
            except Exception as exc:  # a logger never stops training
                if not self._logger_warned:
                    self._logger_warned = True
                    warnings.warn(
                        SinkWarning(
                            f"maeltrace: the epoch's statistics were not logged to "
                            f"{type(logger).__name__}: {type(exc).__name__}: {exc}"
                        ),
                        stacklevel=2,
                    )

    # -- setup -----------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._own_timer()
        if self.gpu:
            self.timer.use_device(prefer="torch")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Record what was open, innermost first, so the regions already recorded inside keep
        # their parents; the wait for a batch that never came is no region.
        self._cancel_io()
        self._end_open(
            *_TRAIN_STEP,
            VALIDATION_BATCH,
            VALIDATION,
            TEST_BATCH,
            TEST,
            PREDICT_BATCH,
            PREDICT,
            EPOCH,
        )
        self._in_train_epoch = False

    # -- training --------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._in_train_epoch = True
        self._epoch_log.mark(self.timer)
        self.timer.start(EPOCH)
        self.timer.start(IO)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._in_train_epoch = False
        self._cancel_io()
        self._log_epoch(trainer)
        self.timer.end(EPOCH)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._end_open(IO)
        self._start_batch(BATCH, batch)
        self.timer.start(FORWARD, gpu=self.gpu)

    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._end_open(FORWARD)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # Manual optimization may step one optimizer before the next backward.
        self._end_open(FORWARD, OPTIMIZER)
        self.timer.start(BACKWARD, gpu=self.gpu)

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self._end_open(BACKWARD)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._end_open(FORWARD, OPTIMIZER)
        self.timer.start(OPTIMIZER, gpu=self.gpu)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._end_open(*_TRAIN_STEP)
        if self._in_train_epoch:
            self.timer.start(IO)

    # -- validation, test and prediction ---------------------------------------------------------

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._sanity_checking = bool(getattr(trainer, "sanity_checking", False))
        if not self._sanity_checking:
            self._cancel_io()
            self.timer.start(VALIDATION)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._sanity_checking:
            self._sanity_checking = False
            return
        self.timer.end(VALIDATION)
        if self._in_train_epoch:
            self.timer.start(IO)

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._sanity_checking:
            self._start_batch(VALIDATION_BATCH, batch)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._sanity_checking:
            self.timer.end(VALIDATION_BATCH)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.timer.start(TEST)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.timer.end(TEST)

    def on_test_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_batch(TEST_BATCH, batch)

    def on_test_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.timer.end(TEST_BATCH)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.timer.start(PREDICT)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.timer.end(PREDICT)

    def on_predict_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_batch(PREDICT_BATCH, batch)

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.timer.end(PREDICT_BATCH)

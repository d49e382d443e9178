"""Hugging Face integration: `TimerCallback` times ``transformers.Trainer`` training, evaluation
and prediction."""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import transformers

from maeltrace.integrations._batch_size import leading_size
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
    VALIDATION,
    VALIDATION_BATCH,
)
from maeltrace.keys import Key
from maeltrace.sinks.base import warn_failure
from maeltrace.timer import Timer

__all__ = ["TimerCallback"]

_OPEN_INNERMOST_FIRST: tuple[Key, ...] = (
    OPTIMIZER,
    BACKWARD,
    FORWARD,
    BATCH,
    VALIDATION_BATCH,
    VALIDATION,
    PREDICT_BATCH,
    PREDICT,
    EPOCH,
)
"""Every region the callback opens, children before their parents."""

_GUARDED = ("train", "evaluate", "predict")
"""The Trainer's methods after whose exception the callback ends what is still open."""


def _calling_trainer(method: str | None = None) -> Any:
    """The `transformers.Trainer` up the call stack (in ``method`` when named), or None.

    Callbacks are never handed the Trainer; this runs once per Trainer or evaluation pass.
    """
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if method is None or frame.f_code.co_name == method:
            owner = frame.f_locals.get("self")
            if isinstance(owner, transformers.Trainer):
                return owner
        frame = frame.f_back
    return None


class TimerCallback(CallbackTimer, transformers.TrainerCallback):
    """``transformers.Trainer`` callback recording epochs, each batch's IO wait, forward,
    backward and optimizer step, and evaluation and prediction passes and their batches into a
    `maeltrace.Timer` (`maeltrace.integrations.vocabulary` names the keys).

    What each region holds, for transformers 5.x (the Trainer gives callbacks no batch hooks,
    so the model's forward hooks stand in):

    - ``io``: from the previous optimizer step's end (or the epoch's start) to the next step's
      start. The Trainer fetches all k micro-batches of a step before running the first
      (gradient accumulation over k batches), so there is one ``io`` per optimizer step, the
      wait for its k batches; the Trainer's logging and checkpointing between steps fall in it.
    - ``batch``: one data-loader micro-batch: moving it to the device, ``forward``,
      ``backward`` and, on a step's last micro-batch, the ``optimizer`` step and the learning
      rate scheduler.
    - ``forward``: the model's first call in the micro-batch, loss included (the model computes
      it from ``labels``); ``backward``: the rest of the micro-batch up to the optimizer step
      (backward pass, gradient clipping).
    - ``optimizer``: ``optimizer.step()``, one per k batches.
    - ``validation`` and ``validation_batch``: each ``evaluate`` pass, opened by the model's
      first forward in it, and each of its batches (forward and gathering); an evaluation at
      an epoch's end is inside that epoch, which closes when the evaluation does.
    - ``predict`` and ``predict_batch``: each ``Trainer.predict`` pass and its batches.

    Each ``batch``, ``validation_batch`` and ``predict_batch`` counts its items
    (``Timer.add_items``): the leading dimension of the first tensor the model is called with,
    so a last, smaller batch counts its true size (per process: each rank counts its own).
    A ``batch`` also counts the tokens the Trainer counts when ``include_num_input_tokens_seen``
    is on (all tokens, or the non-padding ones), as the growth of ``num_input_tokens_seen``
    over the micro-batch; not under several processes, where that count is every process's.

    Each epoch's statistics (`EpochLog`) go, at the epoch's end, to the Trainer's ``report_to``
    integrations that are active: MLflow (the active run, at ``state.global_step``) and W&B
    (``wandb.run``, into the step the Trainer commits next). A failure there gives one
    `maeltrace.SinkWarning`, never an exception.

    The Trainer has no exception hook: the callback finds its Trainer when it is built with it
    (``Trainer(callbacks=[TimerCallback()])``) and wraps that instance's ``train``,
    ``evaluate`` and ``predict`` so that, when one raises, the open regions end innermost
    first and no span is left without its parent. Added later (``add_callback``), it ends what
    a failed call left open at its next event.

    With ``timer=None`` the callback builds its own `Timer` when training begins (or at the
    first evaluation or prediction), with the run id all ranks share
    (`maeltrace.shared_run_id`).

    Args:
        timer: the timer to record into; default one of the callback's own.
        gpu: also measure batches, forward, backward, optimizer steps and evaluation and
            prediction batches on the device clock (torch's, unless the timer names another).
    """

    def __init__(self, timer: Timer | None = None, *, gpu: bool = False) -> None:
        self._hold(timer)
        super().__init__()
        self.gpu = bool(gpu)
        self._ready = False
        self._model: Any = None
        self._hooks: list[Any] = []
        self._guarded: weakref.WeakSet[Any] = weakref.WeakSet()
        self._in_train = False
        self._in_epoch = False
        self._epoch_waits_for_evaluation = False
        self._forwarded = False
        self._state: Any = None  # the Trainer's state, when it counts input tokens
        self._tokens_before = 0
        self._pass: tuple[Key, Key] | None = None
        self._epochs = EpochLog()
        self._warned: set[str] = set()

    # -- setup -----------------------------------------------------------------------------------

    def _ready_to_record(self) -> None:
        """Builds the timer and chooses the device clock, once."""
        if not self._ready:
            self._ready = True
            self._own_timer()
            if self.gpu:
                self.timer.use_device(prefer="torch")

    def _watch(self, model: Any) -> None:
        """Hooks the forward of ``model`` (moving the hooks when the Trainer's model changes)."""
        if model is None or model is self._model:
            return
        for handle in self._hooks:
            handle.remove()
        self._model = model
        self._hooks = [
            model.register_forward_pre_hook(self._forward_begins, with_kwargs=True),
            model.register_forward_hook(self._forward_ends),
        ]

    def _guard(self, trainer: Any) -> None:
        """Wraps the Trainer's entry points so that an exception ends the open regions."""
        if trainer is None or trainer in self._guarded:
            return
        self._guarded.add(trainer)
        for name in _GUARDED:
            setattr(trainer, name, self._guarded_call(getattr(trainer, name)))

    def _guarded_call(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except BaseException:
                self._end_open()
                raise

        return guarded

    def _end_open(self) -> None:
        """Ends every open region, innermost first; the wait for a batch that never came is no
        region."""
        self._in_train = self._in_epoch = self._epoch_waits_for_evaluation = False
        self._pass = None
        timer = self._timer
        if timer is None:
            return
        if timer.is_open(IO):
            timer.cancel(IO)
        for key in _OPEN_INNERMOST_FIRST:
            if timer.is_open(key):
                timer.end(key)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard(_calling_trainer("__init__"))
        self._watch(kwargs.get("model"))

    # -- training --------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ready_to_record()
        self._end_open()  # what a failed call left open, when the Trainer is not guarded
        self._guard(_calling_trainer("train"))  # added after the Trainer: guards later calls
        self._watch(kwargs.get("model"))
        self._in_train = True
        counting = getattr(args, "include_num_input_tokens_seen", "no") not in ("no", False)
        # Under several processes the Trainer's count is all processes' tokens, not this one's.
        alone = getattr(args, "world_size", 1) == 1
        self._state = state if counting and alone else None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_open()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        timer = self.timer
        if self._epoch_waits_for_evaluation:  # the evaluation it waited for never came
            self._epoch_waits_for_evaluation = False
            timer.end(EPOCH)
        self._epochs.mark(timer)
        self._in_epoch = True
        timer.start(EPOCH)
        timer.start(IO)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        timer = self.timer
        self._in_epoch = False
        if timer.is_open(IO):
            timer.cancel(IO)
        if timer.is_open(BATCH) and not self._forwarded:
            # The Trainer stopped the epoch before running the micro-batch already fetched.
            timer.cancel(BATCH)
        self._end_step()
        self._report(args, state, self._epochs.metrics(timer))
        if getattr(control, "should_evaluate", False):
            # The Trainer evaluates right after this hook: the evaluation is this epoch's.
            self._epoch_waits_for_evaluation = True
        else:
            timer.end(EPOCH)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        timer = self.timer
        if timer.is_open(IO):
            timer.end(IO)
        self._start_batch()

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The step's next micro-batch is already fetched and runs right away.
        self._end_step()
        self._start_batch()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        timer = self.timer
        for key in (FORWARD, BACKWARD):
            if timer.is_open(key):
                timer.end(key)
        timer.start(OPTIMIZER, gpu=self.gpu)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.timer.is_open(OPTIMIZER):
            self.timer.end(OPTIMIZER)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_step()
        if self._in_epoch:
            self.timer.start(IO)

    def _start_batch(self) -> None:
        self._forwarded = False
        if self._state is not None:
            self._tokens_before = self._state.num_input_tokens_seen
        self.timer.start(BATCH, gpu=self.gpu)

    def _end_step(self) -> None:
        timer = self.timer
        if self._state is not None and timer.is_open(BATCH):
            # The Trainer adds the micro-batch's tokens after its backward, before this hook.
            tokens = self._state.num_input_tokens_seen - self._tokens_before
            if tokens > 0:
                timer.add_items(BATCH, tokens=tokens)
        for key in (OPTIMIZER, BACKWARD, FORWARD, BATCH):
            if timer.is_open(key):
                timer.end(key)

    def _forward_begins(self, module: Any, args: Any, kwargs: Any) -> None:
        timer = self.timer
        if module.training:
            # Only the micro-batch's first call, and never outside a batch (a callback's own).
            if not self._forwarded and timer.is_open(BATCH):
                self._forwarded = True
                self._count_items(BATCH, args, kwargs)
                timer.start(FORWARD, gpu=self.gpu)
            return
        if self._pass is None and not self._begin_pass():
            return
        assert self._pass is not None
        batch_key = self._pass[1]
        if not timer.is_open(batch_key):
            timer.start(batch_key, gpu=self.gpu)
            self._count_items(batch_key, args, kwargs)

    def _count_items(self, key: Key, args: Any, kwargs: Any) -> None:
        """Counts the batch the model is called with (the Trainer passes it by keyword)."""
        items = leading_size((kwargs, args))
        if items:
            self.timer.add_items(key, items=items)

    def _forward_ends(self, module: Any, inputs: Any, outputs: Any) -> None:
        timer = self.timer
        if module.training and timer.is_open(FORWARD):
            timer.end(FORWARD)
            timer.start(BACKWARD, gpu=self.gpu)

    # -- evaluation and prediction ---------------------------------------------------------------

    def _begin_pass(self) -> bool:
        """Opens an evaluation or prediction pass at its first forward; returns whether it did
        (not for a forward outside the Trainer's evaluation loop, such as the user's own)."""
        trainer = _calling_trainer("prediction_step")
        if trainer is None:
            return False
        self._ready_to_record()
        self._guard(trainer)
        timer = self.timer
        if timer.is_open(IO):  # evaluating between steps: no wait for a batch
            timer.cancel(IO)
        predicting = not self._in_train and _calling_trainer("predict") is not None
        self._pass = (PREDICT, PREDICT_BATCH) if predicting else (VALIDATION, VALIDATION_BATCH)
        timer.start(self._pass[0])
        return True

    def _end_pass(self, key: Key) -> None:
        timer = self.timer
        if self._pass is not None and self._pass[0] == key:
            for open_key in (self._pass[1], key):
                if timer.is_open(open_key):
                    timer.end(open_key)
            self._pass = None

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pass is not None and self.timer.is_open(self._pass[1]):
            self.timer.end(self._pass[1])

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        self._end_pass(VALIDATION)
        if self._epoch_waits_for_evaluation:
            self._epoch_waits_for_evaluation = False
            self.timer.end(EPOCH)
        elif self._in_epoch:
            self.timer.start(IO)

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        self._end_pass(PREDICT)

    # -- the Trainer's loggers -------------------------------------------------------------------

    def _report(self, args: Any, state: Any, metrics: dict[str, float]) -> None:
        """Hands an epoch's statistics to the active ``report_to`` integrations."""
        if not metrics:
            return
        report_to = getattr(args, "report_to", None) or []
        if isinstance(report_to, str):
            report_to = [report_to]
        if "mlflow" in report_to or "all" in report_to:
            self._to_mlflow(metrics, int(getattr(state, "global_step", 0)))
        if "wandb" in report_to or "all" in report_to:
            self._to_wandb(metrics)

    def _to_mlflow(self, metrics: dict[str, float], step: int) -> None:
        mlflow = sys.modules.get("mlflow")  # imported by the Trainer's MLflowCallback
        try:
            if mlflow is not None and mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=step)
        except Exception as exc:  # the loggers never stop training
            self._warn_once("mlflow", exc)

    def _to_wandb(self, metrics: dict[str, float]) -> None:
        wandb = sys.modules.get("wandb")
        try:
            run = getattr(wandb, "run", None)
            if run is not None:
                # W&B steps only go forward and its Trainer callback counts them: join the
                # step it commits next rather than name one.
                run.log(metrics, commit=False)
        except Exception as exc:  # the loggers never stop training
            self._warn_once("wandb", exc)

    def _warn_once(self, sink: str, exc: Exception) -> None:
        if sink not in self._warned:
            self._warned.add(sink)
            warn_failure(sink, "the epoch's statistics were not logged", exc, None)

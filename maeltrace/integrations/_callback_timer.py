"""The timer a trainer's callback records into, shared by the Lightning and Hugging Face ones."""

from __future__ import annotations

from maeltrace.timer import Timer

__all__ = ["CallbackTimer"]


class CallbackTimer:
    """Holds the user's `Timer`, or builds the callback's own: with the run id every rank
    agrees on (`maeltrace.shared_run_id`) once the trainer's process group is up, or a plain
    one when read before the trainer starts."""

    _timer: Timer | None = None

    def _hold(self, timer: Timer | None) -> None:
        """Keeps ``timer`` (None: the callback builds its own).

        Raises:
            TypeError: ``timer`` is not a maeltrace Timer.
        """
        if timer is not None and not isinstance(timer, Timer):
            raise TypeError(f"TimerCallback needs a maeltrace Timer, not {type(timer).__name__}")
        self._timer = timer

    @property
    def timer(self) -> Timer:
        """The timer the callback records into (its own, built on first use, when none was
        given)."""
        if self._timer is None:
            self._timer = Timer()
        return self._timer

    def _own_timer(self) -> None:
        """Builds the callback's own timer with the run id every rank agrees on."""
        if self._timer is None:
            from maeltrace._runinfo import new_run_id
            from maeltrace.distributed import shared_run_id

            self._timer = Timer(run_id=shared_run_id(new_run_id()))

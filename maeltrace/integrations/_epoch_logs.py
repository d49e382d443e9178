"""Each epoch's statistics, named for a trainer's own loggers (Lightning's, the Trainer's)."""

from __future__ import annotations

from maeltrace.keys import Key
from maeltrace.sinks.base import warn_failure
from maeltrace.sinks.live import epoch_values
from maeltrace.timer import Timer

__all__ = ["EpochLog"]


class EpochLog:
    """Remembers how many samples each key had when an epoch began, and gives the statistics
    of the samples recorded since, for the trainer's loggers.

    Names are ``maeltrace/<key>[/gpu]/epoch/mean`` (seconds) and ``.../epoch/count``
    (regions), `maeltrace.sinks.base.metric_name` with the samples segment ``epoch``: every
    sample of the epoch counts (no warm-up is skipped; the run's summary does that), and the
    ``epoch`` segment says so, where the run's summary says ``steady`` or ``all``. The
    epoch's own region, which closes after the loggers are called, is in the next epoch's
    figures, never lost.

    Reads the timer once per epoch; a failure gives one `maeltrace.SinkWarning` and an empty
    dict, never an exception into the training loop.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[Key, bool], int] = {}

    def _counts(self, timer: Timer) -> dict[tuple[Key, bool], list[float]]:
        samples: dict[tuple[Key, bool], list[float]] = {}
        for key in timer.keys():  # noqa: SIM118 (a Timer is not a dict)
            for gpu in (False, True):
                try:
                    samples[key, gpu] = timer.get_time(key, gpu, warmup=0)
                except KeyError:  # no device time under this key
                    continue
        return samples

    def mark(self, timer: Timer) -> None:
        """Starts an epoch: samples recorded until now are not in the next `metrics`."""
        try:
            self._seen = {row: len(values) for row, values in self._counts(timer).items()}
        except Exception as exc:  # the loggers never stop training
            warn_failure("trainer loggers", "the epoch's start was not read", exc, None)

    def metrics(self, timer: Timer) -> dict[str, float]:
        """The mean and count of each key's samples since `mark`, and marks anew.

        Returns:
            A new dict, in key order, CPU before device rows; empty when nothing was recorded.
        """
        values: dict[str, float] = {}
        try:
            counts = self._counts(timer)
            values = epoch_values({row: s[self._seen.get(row, 0) :] for row, s in counts.items()})
            self._seen = {row: len(samples) for row, samples in counts.items()}
        except Exception as exc:  # the loggers never stop training
            warn_failure("trainer loggers", "the epoch's statistics were not read", exc, None)
            return {}
        return values

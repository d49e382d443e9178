"""Deep500's ``deep500.utils.timer``: `Timer`, `TimeType` and `TimeStats` with the seed's API.

Differences from the seed's timer, all deliberate (its known flaws):

* reading a key that was never timed raises `KeyError` in `Timer.get_time_stats` and leaves
  later reports intact (the seed's timer broke every later report); `Timer.get_time` returns an
  empty list for it, as the seed's did;
* `Timer.save_all_time_stats` writes atomically (never a half file), refusing an existing
  file by default as the seed's did;
* string keys work anywhere a `TimeType` does, regions of one key may not nest (as before),
  and a failed region raises `maeltrace.RegionError`, a `RuntimeError` as before.

``log_wb_all`` and ``log_mlflow_all`` log under Deep500's metric names (``prefix/BATCH``, and
``prefix/CPU/BATCH``, ``prefix/GPU/BATCH`` for `CPUGPUTimer`).
"""

from __future__ import annotations

import os
from typing import IO, Any, NamedTuple

import maeltrace
from maeltrace.keys import Key, TimeType

__all__ = ["TimeStats", "TimeType", "Timer"]


class TimeStats(NamedTuple):
    """The seed's statistics record: a named tuple of five floats, in seconds."""

    min: float
    mean: float
    median: float
    max: float
    stdev: float

    def __str__(self) -> str:
        return (
            f"min: {self.min:.5f} mean: {self.mean:.5f} median: {self.median:.5f}"
            f" max: {self.max:.5f} stdev: {self.stdev:.5f}"
        )


class Timer(maeltrace.Timer):
    """Deep500's ``Timer``, recorded by maeltrace; see the module docstring for differences."""

    def get_time(self, key: Key, gpu: bool = False, *, warmup: int | None = None) -> list[float]:
        """A list of all times recorded for ``key`` (empty if none), as in the seed."""
        try:
            return super().get_time(key, gpu, warmup=warmup)
        except KeyError:
            return []

    def get_time_stats(  # type: ignore[override]  # the seed's five-field record
        self, key: Key, gpu: bool = False, *, warmup: int | None = None
    ) -> TimeStats:
        """The seed's five statistics of ``key``.

        Raises:
            KeyError: no region of ``key`` completed; later calls are unaffected.
        """
        full = super().get_time_stats(key, gpu, warmup=warmup)
        return TimeStats(full.min, full.mean, full.median, full.max, full.stdev)

    def complete_all(self) -> None:
        """Resolves outstanding device times; CPU regions are complete when they end."""
        self.flush()

    def save_all_time_stats(
        self,
        filename: str | os.PathLike[str],
        *,
        exist_ok: bool = False,
        warmup: int | None = None,
    ) -> None:
        """Writes the statistics table to ``filename``, which must not exist (as in the seed).

        Raises:
            FileExistsError: ``filename`` exists and ``exist_ok`` is false.
        """
        super().save_all_time_stats(filename, exist_ok=exist_ok, warmup=warmup)

    def log_mlflow_all(
        self, prefix: str = "", stats: str = "mean", **options: Any
    ) -> dict[str, float]:
        """Logs the mean of every key to MLflow under Deep500's names (``prefix/BATCH``)."""
        options.setdefault("names", "deep500")
        return super().log_mlflow_all(prefix, stats, **options)

    def log_wb_all(self, prefix: str = "", stats: str = "mean", **options: Any) -> dict[str, float]:
        """Logs the mean of every key to W&B under Deep500's names (``prefix/BATCH``)."""
        options.setdefault("names", "deep500")
        return super().log_wb_all(prefix, stats, **options)

    def print_all_time_stats(
        self, file: IO[str] | None = None, *, warmup: int | None = None
    ) -> None:
        """Prints the statistics table of every key (to stdout by default)."""
        super().print_all_time_stats(file, warmup=warmup)

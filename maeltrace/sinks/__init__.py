"""Sinks: a timer's statistics logged to experiment trackers (MLflow, Weights & Biases).

The trackers themselves load only in their modules, `maeltrace.sinks.mlflow` and
`maeltrace.sinks.wandb`; this module holds what they share and imports no framework.

Metric names
------------

``prefix`` gets a ``/`` appended when it is not empty and lacks one, as in Deep500's timer, and
then every name starts with it. With the default ``names="maeltrace"``, the key is ``str(key)``
(``TimeType.BATCH`` is ``batch``) and:

=============================  ==========================================================
``stats="mean"``               ``stats="all"``
=============================  ==========================================================
``<prefix><key>``              ``<prefix><key>/<field>``             (CPU clock)
``<prefix><key>/gpu``          ``<prefix><key>/gpu/<field>``         (device clock)
``<prefix><key>/first_call``   ``<prefix><key>/first_call/<field>``  (JAX's compiling calls)
=============================  ==========================================================

and ``<prefix><key>/gpu/first_call[/<field>]`` for compiling calls on the device clock. The
fields are `STATS_FIELDS`: ``min``, ``mean``, ``median``, ``max``, ``stdev``, ``p95`` (seconds)
and ``count`` (regions). ``stats="mean"`` logs the mean under the key's own name, as Deep500's
``log_mlflow_all`` and ``log_wb_all`` did (so ``train/batch`` for ``prefix="train"``).

``names="deep500"`` gives the exact names of Deep500's timers instead: the key's enum name
(``BATCH``; other string keys as they are), and, when the timer measured device times, the
``CPU/`` and ``GPU/`` sub-prefixes of Deep500's ``CPUGPUTimer`` (``train/CPU/BATCH``,
``train/GPU/BATCH``); ``first_call`` and ``<field>`` follow as above.

Values are the steady-state statistics (the timer's warm-up samples skipped, as
`maeltrace.Timer.get_time_stats` does) where warm-up leaves samples, else those of every
sample. Two rows that would share a name (a key ``"a/gpu"`` next to the GPU row of key ``"a"``)
keep the first, with a `SinkWarning`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from maeltrace.errors import SinkWarning
from maeltrace.files import append_line
from maeltrace.keys import TimeType

if TYPE_CHECKING:
    from maeltrace.report import Row, Summary
    from maeltrace.stats import TimeStats
    from maeltrace.timer import Timer

__all__ = [
    "NAMES",
    "STATS",
    "STATS_FIELDS",
    "SinkWarning",
    "metric_values",
]

STATS = ("mean", "all")
"""What the sinks' ``stats`` argument accepts: the mean only, or every field of `STATS_FIELDS`."""

STATS_FIELDS = ("min", "mean", "median", "max", "stdev", "p95", "count")
"""The statistics ``stats="all"`` logs per row, each as ``<row name>/<field>``."""

NAMES = ("maeltrace", "deep500")
"""What the sinks' ``names`` argument accepts; see the module docstring."""

Stats = Literal["mean", "all"]
Names = Literal["maeltrace", "deep500"]


def normalize_prefix(prefix: str) -> str:
    """``prefix`` with a ``/`` appended when it is not empty and lacks one (Deep500's rule)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    return prefix + "/" if prefix and not prefix.endswith("/") else prefix


def check_arguments(prefix: str, stats: str, names: str) -> str:
    """Validates the sinks' common arguments; returns the normalized prefix.

    Raises:
        TypeError: ``prefix`` is not a string.
        ValueError: ``stats`` or ``names`` is not one of `STATS` or `NAMES`.
    """
    if stats not in STATS:
        raise ValueError(f"stats must be one of {', '.join(map(repr, STATS))}, not {stats!r}")
    if names not in NAMES:
        raise ValueError(f"names must be one of {', '.join(map(repr, NAMES))}, not {names!r}")
    return normalize_prefix(prefix)


def _row_name(row: Row, prefix: str, names: str, qualify: bool) -> str:
    if names == "deep500":
        base = row.key.name if isinstance(row.key, TimeType) else str(row.key)
        if qualify:
            base = ("GPU/" if row.device else "CPU/") + base
    else:
        base = str(row.key) + ("/gpu" if row.device else "")
    return prefix + base + ("/first_call" if row.compiled else "")


def _row_stats(row: Row, warmup: int) -> TimeStats:
    return row.steady if warmup and row.steady is not None else row.stats


def metric_values(
    summary: Summary, prefix: str = "", stats: str = "mean", *, names: str = "maeltrace"
) -> dict[str, float]:
    """The metrics a sink logs for ``summary``, named as the module docstring says.

    Args:
        summary: the timer's summary (`maeltrace.Timer.summary`).
        prefix: put before every name; a ``/`` is added after a non-empty prefix lacking one.
        stats: ``"mean"`` (the mean of each row) or ``"all"`` (every field of `STATS_FIELDS`).
        names: ``"maeltrace"`` or ``"deep500"`` (Deep500's names; see the module docstring).

    Returns:
        A new dict, in row order; ``count`` values are floats too.

    Raises:
        TypeError: ``prefix`` is not a string.
        ValueError: ``stats`` or ``names`` is not one of `STATS` or `NAMES`.
    """
    prefix = check_arguments(prefix, stats, names)
    qualify = any(row.device for row in summary.rows)
    values: dict[str, float] = {}
    for row in summary.rows:
        name = _row_name(row, prefix, names, qualify)
        row_stats = _row_stats(row, summary.warmup)
        if stats == "mean":
            pairs = [(name, row_stats.mean)]
        else:
            pairs = [
                (f"{name}/{field}", float(getattr(row_stats, field))) for field in STATS_FIELDS
            ]
        for metric, value in pairs:
            if metric in values:
                warnings.warn(
                    SinkWarning(
                        f"two rows are both named {metric!r}; the row {row.label!r} is not logged"
                    ),
                    stacklevel=3,
                )
                break
            values[metric] = value
    return values


# -- shared by the sinks: the files they upload, and the values they could not deliver --------


def output_files(timer: Timer) -> list[Path]:
    """Writes the timer's stats files and Chrome trace (`maeltrace.Timer.write_outputs`) and
    returns them, with this process's report files (``report*``) where there are any."""
    folder = timer.write_outputs()
    if folder is None:  # nothing could be written; write_outputs warned
        return []
    suffix = timer._file_suffix()
    files = [folder / f"stats{suffix}.json", folder / f"stats{suffix}.md"]
    files.append(folder / f"trace{suffix}.json")
    files.extend(
        path
        for path in sorted(folder.glob(f"report{suffix}.*"))
        if path.is_file() and not path.name.startswith(".")
    )
    return [path for path in files if path.is_file()]


def pending_path(timer: Timer, sink: str) -> Path:
    """Where a sink keeps the values it could not deliver: ``pending-<sink>.jsonl`` in the
    output folder (``pending-<sink>.rank<N>.jsonl`` in a ranked process)."""
    return timer.output_dir / f"pending-{sink}{timer._file_suffix()}.jsonl"


def keep_pending(
    timer: Timer, sink: str, metrics: Mapping[str, float], error: str, **details: Any
) -> Path:
    """Appends an entry to the sink's pending file, JSON lines, one entry a line::

        {"sink", "run_id", "time_unix_s", "metrics": {name: value}, "error", ...details}

    Appended by `maeltrace.files.append_line` (threads and processes may share the file; a
    full disk leaves no partial line) and read back by `maeltrace.files.read_lines`.

    Raises:
        OSError: the file cannot be written; it is left as it was.
    """
    path = pending_path(timer, sink)
    entry: dict[str, Any] = {
        "sink": sink,
        "run_id": timer.run_id,
        "time_unix_s": time.time(),
        "metrics": dict(metrics),
        "error": error,
        **details,
    }
    # default=str: a detail JSON cannot encode is kept as its text rather than lost.
    append_line(path, json.dumps(entry, separators=(",", ":"), default=str).encode("utf-8"))
    return path


def warn_failure(sink: str, what: str, exc: BaseException | str, kept: Path | None) -> None:
    """Issues the one `SinkWarning` of a failed sink call."""
    where = f"; the values are kept in {kept}" if kept is not None else ""
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    warnings.warn(SinkWarning(f"maeltrace: {sink}: {what}: {reason}{where}"), stacklevel=3)

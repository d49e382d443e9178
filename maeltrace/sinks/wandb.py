"""Logs a summary's statistics, and the run's stats files and trace, to a Weights & Biases run."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maeltrace._imports import require
from maeltrace.environment import WANDB_PROJECT, env_str
from maeltrace.sinks.base import (
    PendingFile,
    check_arguments,
    metric_values,
    pending_entry,
    pending_path,
    rank_suffix_of,
    warn_failure,
)

if TYPE_CHECKING:
    from maeltrace.report import Summary
    from maeltrace.timer import Timer

__all__ = [
    "ARTIFACT_TYPE",
    "DEFAULT_PROJECT",
    "EPOCH_METRIC",
    "TAG",
    "WandbSeries",
    "log_summary",
    "log_wandb",
    "run_config",
]

SINK = "wandb"

ARTIFACT_TYPE = "maeltrace"
"""The type of the W&B artifact holding the stats files, Chrome trace and report."""

DEFAULT_PROJECT = "maeltrace"
"""The project of runs this sink starts when ``WANDB_PROJECT`` is unset."""

TAG = "maeltrace"
"""The tag of every W&B run maeltrace logs to."""

_BAD_ARTIFACT_CHARACTERS = re.compile(r"[^\w.-]")


def artifact_name(run_id: str) -> str:
    """The artifact of a maeltrace run: ``maeltrace-<run id>``, with characters W&B refuses in
    artifact names replaced by ``_``; each call logs a new version of it."""
    return _BAD_ARTIFACT_CHARACTERS.sub("_", f"maeltrace-{run_id}")


def run_config(summary: Summary) -> dict[str, Any]:
    """What maeltrace puts under the config key ``maeltrace`` of the run it logs to: the
    summary's run id (which finds the run's traces and files), the host and the warm-up (the
    samples per key that the ``/steady/`` values skip)."""
    return {
        "run_id": str(summary.metadata.get("run_id", "")),
        "host": socket.gethostname(),
        "warmup": summary.warmup,
    }


def _label(run: Any, summary: Summary) -> None:
    """Gives a run that was there before maeltrace's tag and config, keeping what it holds."""
    if TAG not in (run.tags or ()):
        run.tags = (*(run.tags or ()), TAG)
    if "maeltrace" not in run.config:
        run.config.update({"maeltrace": run_config(summary)})


def log_summary(
    summary: Summary | None,
    *,
    folder: Path,
    files: Callable[[], list[Path]],
    prefix: str = "",
    stats: str = "mean",
    artifacts: bool = True,
    names: str = "maeltrace",
) -> dict[str, float]:
    """Logs a summary's statistics to a W&B run: one ``wandb.log`` call (one step), CPU and GPU
    rows together, and the same values into the run's summary.

    Deep500's ``log_wb_all``, with CPU and GPU rows in one step (`maeltrace.Timer.log_wb_all`
    calls it). Metric names are those of `maeltrace.sinks.base`
    (``maeltrace/<prefix><key>[/gpu]/<steady|all>/mean``, every field of
    `maeltrace.sinks.base.STATS_FIELDS` with ``stats="all"``; Deep500's own with
    ``names="deep500"``).

    The run: ``wandb.run`` when there is one, left running; else a new run
    (``wandb.init``) named by the summary's run id, in ``WANDB_PROJECT`` or `DEFAULT_PROJECT`,
    and finished here. Either way the run gets the tag `TAG` and, under the config key
    ``maeltrace``, the run id, host and warm-up (`run_config`), unless its config already holds
    that key (the user's, or the first timer's to log there: never overwritten). The mode is
    W&B's own choice (``WANDB_MODE``: ``offline`` needs no account or network).

    With ``artifacts``, ``files()`` is called (the Timer writes its stats files and Chrome
    trace there) and the paths it returns are logged as a new version of the artifact
    `artifact_name` of type `ARTIFACT_TYPE`.

    A failure issues one `maeltrace.SinkWarning` and appends the metrics to
    ``<folder>/pending-wandb<rank>.jsonl`` (`maeltrace.sinks.base.PendingFile`); training goes
    on. W&B sends in the background, so a slow or unreachable server does not block the logging
    calls; starting a run online can wait for it (W&B's ``init_timeout``).

    Args:
        summary: what to log; its metadata gives the run id and the rank of the file names.
            None (a disabled timer) checks the arguments and logs nothing.
        folder: the run's output folder.
        files: returns the artifact paths; called only with ``artifacts``.
        prefix: put before every name; a ``/`` is added after a non-empty prefix lacking one.
        stats: ``"mean"`` or ``"all"`` (min, mean, median, max, stdev, p95, count).
        artifacts: also log the stats files, Chrome trace and report as an artifact.
        names: ``"maeltrace"`` or ``"deep500"`` (Deep500's names; see `maeltrace.sinks.base`).

    Returns:
        The metrics, by name (also when they could not be delivered).

    Raises:
        ImportError: wandb is not installed; the message says ``pip install 'maeltrace[wandb]'``.
        TypeError: ``prefix`` is not a string.
        ValueError: ``stats`` or ``names`` is not one that works.
    """
    wandb = require("wandb", "wandb")
    check_arguments(prefix, stats, names)
    if summary is None:
        return {}
    run_id = str(summary.metadata.get("run_id", ""))
    try:
        values = metric_values(summary, prefix, stats, names=names)
    except Exception as exc:  # a sink never stops training
        warn_failure(SINK, "nothing was logged", exc, None)
        return {}
    paths: list[Path] = []
    if artifacts:
        try:
            paths = files()
        except Exception as exc:  # the metrics still go
            warn_failure(SINK, "the stats files and trace were not written", exc, None)
    run: Any = None
    started = metrics_done = False
    try:
        run = wandb.run
        if run is None:
            run = wandb.init(
                project=env_str(WANDB_PROJECT, DEFAULT_PROJECT),
                name=run_id,
                config={"maeltrace": run_config(summary)},
                tags=[TAG],
            )
            started = True
        else:
            _label(run, summary)
        run.log(values)
        run.summary.update(values)
        metrics_done = True
        if paths:
            artifact = wandb.Artifact(artifact_name(run_id), type=ARTIFACT_TYPE)
            for path in paths:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact)
        if started:
            run.finish()
    except Exception as exc:  # a sink never stops training
        if started and run is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                run.finish(exit_code=1)
        if metrics_done:
            warn_failure(SINK, "the artifact was not logged", exc, None)
        else:
            pending = PendingFile(pending_path(folder, SINK, rank_suffix_of(summary.metadata)))
            _keep(pending, run_id, values, exc, run)
    return values


EPOCH_METRIC = "maeltrace/epoch"
"""The x-axis of the live series (`WandbSeries`): the epoch index, W&B's ``step_metric`` of each
of its names, so that the run's own steps stay the trainer's."""


class WandbSeries:
    """Each epoch's statistics as a series of the W&B run, for `maeltrace.sinks.live`.

    The run is ``wandb.run``, else a new one as `log_summary` starts (and finished at `close`;
    the final `log_summary` before it goes to the same run). Each name's ``step_metric`` is
    `EPOCH_METRIC`, logged with the values: W&B's own step is left to the trainer.

    Args:
        run_name: the maeltrace run id.
    """

    name = SINK

    def __init__(self, run_name: str) -> None:
        self._run_name = run_name
        self._run: Any = None
        self._started = False
        self._defined: set[str] = set()

    def capture(self) -> None:
        """Nothing to remember on the training thread: ``wandb.run`` is the process's."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Logs ``values`` at epoch ``step``.

        Raises:
            Exception: whatever W&B raised; the caller keeps the values.
        """
        if self._run is None:
            wandb = require("wandb", "wandb")
            run = wandb.run
            if run is None:
                config = {"run_id": self._run_name, "host": socket.gethostname()}
                run = wandb.init(
                    project=env_str(WANDB_PROJECT, DEFAULT_PROJECT),
                    name=self._run_name,
                    config={"maeltrace": config},
                    tags=[TAG],
                )
                self._started = True
            self._run = run
        for name in values:
            if name not in self._defined:
                self._run.define_metric(name, step_metric=EPOCH_METRIC)
                self._defined.add(name)
        self._run.log({EPOCH_METRIC: step, **values})

    def close(self) -> None:
        """Finishes the run it started; one that was there stays running."""
        if self._started:
            self._started = False
            self._run.finish()


def log_wandb(
    timer: Timer, prefix: str = "", stats: str = "mean", **options: Any
) -> dict[str, float]:
    """`maeltrace.Timer.log_wb_all` as a function (the older entry point); the options are
    those of `log_summary`."""
    return timer.log_wb_all(prefix, stats, **options)


def _keep(
    pending: PendingFile, run_id: str, values: Mapping[str, float], exc: Exception, run: Any
) -> None:
    error = f"{type(exc).__name__}: {exc}"
    entry = pending_entry(
        SINK, run_id, error, metrics=dict(values), wandb_run_id=getattr(run, "id", None)
    )
    try:
        pending.add(entry)
        kept: Path | None = pending.path
    except OSError as write_exc:
        kept = None
        error += f" (and the pending file could not be written: {write_exc})"
    warn_failure(SINK, "metrics were not logged", error, kept)

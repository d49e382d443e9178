"""Logs a timer's statistics, stats files and Chrome trace to a Weights & Biases run."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maeltrace._imports import require
from maeltrace.sinks import check_arguments, keep_pending, metric_values, output_files, warn_failure

if TYPE_CHECKING:
    from maeltrace.timer import Timer

__all__ = ["ARTIFACT_TYPE", "DEFAULT_PROJECT", "log_wandb"]

SINK = "wandb"

ARTIFACT_TYPE = "maeltrace"
"""The type of the W&B artifact holding the stats files, Chrome trace and report."""

DEFAULT_PROJECT = "maeltrace"
"""The project of runs this sink starts when ``WANDB_PROJECT`` is unset."""

_BAD_ARTIFACT_CHARACTERS = re.compile(r"[^\w.-]")


def artifact_name(run_id: str) -> str:
    """The artifact of a maeltrace run: ``maeltrace-<run id>``, with characters W&B refuses in
    artifact names replaced by ``_``; each call logs a new version of it."""
    return _BAD_ARTIFACT_CHARACTERS.sub("_", f"maeltrace-{run_id}")


def log_wandb(
    timer: Timer,
    prefix: str = "",
    stats: str = "mean",
    *,
    artifacts: bool = True,
    names: str = "maeltrace",
) -> dict[str, float]:
    """Logs the timer's statistics to a W&B run: one ``wandb.log`` call (one step), CPU and GPU
    rows together, and the same values into the run's summary.

    Deep500's ``log_wb_all``, with CPU and GPU rows in one step. Metric names are those of
    `maeltrace.sinks` (``<prefix><key>``, ``<prefix><key>/gpu``, ``.../<field>`` with
    ``stats="all"``).

    The run: ``wandb.run`` when there is one, left running; else a new run
    (``wandb.init``) named by the timer's run id, in ``WANDB_PROJECT`` or `DEFAULT_PROJECT`,
    with the run id and host in its config under ``maeltrace``, and finished here. The mode is
    W&B's own choice (``WANDB_MODE``: ``offline`` needs no account or network).

    With ``artifacts``, the timer writes its stats files and Chrome trace
    (`maeltrace.Timer.write_outputs`) and they are logged as a new version of the artifact
    `artifact_name` of type `ARTIFACT_TYPE`, with its report files (``report*``) where there are
    any.

    A failure issues one `maeltrace.sinks.SinkWarning` and appends the metrics to the output
    folder's ``pending-wandb.jsonl`` (see `maeltrace.sinks.keep_pending`); training goes on.
    W&B sends in the background, so a slow or unreachable server does not block the logging
    calls; starting a run online can wait for it (W&B's ``init_timeout``).

    Args:
        timer: the timer; a disabled timer logs nothing.
        prefix: put before every name; a ``/`` is added after a non-empty prefix lacking one.
        stats: ``"mean"`` or ``"all"`` (min, mean, median, max, stdev, p95, count).
        artifacts: also log the stats files, Chrome trace and report as an artifact.
        names: ``"maeltrace"`` or ``"deep500"`` (Deep500's names; see `maeltrace.sinks`).

    Returns:
        The metrics, by name (also when they could not be delivered).

    Raises:
        ImportError: wandb is not installed; the message says ``pip install 'maeltrace[wandb]'``.
        TypeError: ``prefix`` is not a string.
        ValueError: ``stats`` or ``names`` is not one that works.
    """
    wandb = require("wandb", "wandb")
    check_arguments(prefix, stats, names)
    if not timer.enabled:
        return {}
    try:
        values = metric_values(timer.summary(), prefix, stats, names=names)
    except Exception as exc:  # a sink never stops training
        warn_failure(SINK, "nothing was logged", exc, None)
        return {}
    files: list[Path] = []
    if artifacts:
        try:
            files = output_files(timer)
        except Exception as exc:  # the metrics still go
            warn_failure(SINK, "the stats files and trace were not written", exc, None)
    run: Any = None
    started = metrics_done = False
    try:
        run = wandb.run
        if run is None:
            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                name=timer.run_id,
                config={"maeltrace": {"run_id": timer.run_id, "host": socket.gethostname()}},
            )
            started = True
        run.log(values)
        run.summary.update(values)
        metrics_done = True
        if files:
            artifact = wandb.Artifact(artifact_name(timer.run_id), type=ARTIFACT_TYPE)
            for path in files:
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
            _keep(timer, values, exc, run)
    return values


def _keep(timer: Timer, values: Mapping[str, float], exc: Exception, run: Any) -> None:
    error = f"{type(exc).__name__}: {exc}"
    try:
        kept: Path | None = keep_pending(
            timer, SINK, values, error, wandb_run_id=getattr(run, "id", None)
        )
    except OSError as write_exc:
        kept = None
        error += f" (and the pending file could not be written: {write_exc})"
    warn_failure(SINK, "metrics were not logged", error, kept)

"""Logs a summary's statistics, and the run's stats files and Chrome trace, to an MLflow run."""

from __future__ import annotations

import contextlib
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from maeltrace._imports import require
from maeltrace.environment import MLFLOW_RUN_ID, env_str
from maeltrace.sinks.base import (
    BOUNDED_HTTP,
    PendingFile,
    bounded_http,
    check_arguments,
    metric_values,
    mlflow_metric_name,
    mlflow_metric_names,
    pending_entry,
    pending_path,
    rank_suffix_of,
    warn_failure,
)

if TYPE_CHECKING:
    from maeltrace.report import Summary
    from maeltrace.timer import Timer

__all__ = [
    "ARTIFACT_PATH",
    "BOUNDED_HTTP",
    "EXPERIMENT",
    "MlflowSeries",
    "bounded_http",
    "log_mlflow",
    "log_summary",
    "mlflow_metric_name",
    "mlflow_metric_names",
    "run_tags",
]

SINK = "mlflow"

ARTIFACT_PATH = "maeltrace"
"""The run's artifact folder that the stats files, Chrome trace and report go into."""

EXPERIMENT = "maeltrace"
"""The experiment of runs in the SQLite store this sink falls back to (see `log_summary`)."""

_LOCAL_SCHEMES = ("sqlite", "file")


def log_summary(
    summary: Summary | None,
    *,
    folder: Path,
    files: Callable[[], list[Path]],
    prefix: str = "",
    stats: str = "mean",
    artifacts: bool = True,
    timeout_s: float = 5.0,
    names: str = "maeltrace",
    run_id: str | None = None,
) -> dict[str, float]:
    """Logs a summary's statistics as metrics of an MLflow run, in one batch.

    Deep500's ``log_mlflow_all``, with CPU and GPU rows in one call
    (`maeltrace.Timer.log_mlflow_all` calls it). Metric names are those of
    `maeltrace.sinks.base` (``maeltrace/<prefix><key>[/gpu]/<steady|all>/mean``, every field of
    `maeltrace.sinks.base.STATS_FIELDS` with ``stats="all"``; Deep500's own with
    ``names="deep500"``), made acceptable to MLflow by `mlflow_metric_name`; each is logged at
    step 0 with the current time, as ``mlflow.log_metrics`` does.

    The run: ``run_id`` if given (such as the run of Lightning's ``MLFlowLogger``), else the
    active run of the calling thread (``mlflow.active_run()``), else the run named by
    ``MLFLOW_RUN_ID``, all left running; else a new run, named by the summary's run id, in the
    current experiment, and ended (``FINISHED``) here. Either way the run gets maeltrace's
    tags (`run_tags`: ``maeltrace.run_id``, ``maeltrace.host``, ``maeltrace.warmup``); on a run
    that already has a tag of the same name, that tag is kept (the user's, or the first timer's
    to log there), never overwritten.

    The store: the tracking URI configured (``mlflow.set_tracking_uri``,
    ``MLFLOW_TRACKING_URI``), else MLflow's default, a SQLite file ``./mlflow.db`` since MLflow
    3.7; where MLflow would fall back to its file store instead (an old ``./mlruns`` with
    experiments in it; that store is refused from MLflow 3.18), the run goes to the SQLite store
    ``<folder>/mlflow.db``, experiment `EXPERIMENT`, artifacts in ``<folder>/mlartifacts``.

    With ``artifacts``, ``files()`` is called (the Timer writes its stats files and Chrome
    trace there) and the paths it returns go to the run's `ARTIFACT_PATH` folder.

    Bounded: the MLflow calls run on a worker thread, and against a server this call waits
    for them at most ``timeout_s`` seconds; meanwhile MLflow's HTTP client retries once and
    waits ``timeout_s`` per request (`bounded_http`; settings the user made are kept, and the
    change is seen by other threads' MLflow calls during the call). Local stores (SQLite,
    files) are waited for. A call that fails or gets no answer in time issues one
    `maeltrace.SinkWarning` and appends the metrics to ``<folder>/pending-mlflow<rank>.jsonl``
    (`maeltrace.sinks.base.PendingFile`); training goes on. Metrics of a call that timed out may
    still arrive later, so that file can repeat them. Artifacts still uploading when the metrics
    are in keep uploading in the background.

    Args:
        summary: what to log; its metadata gives the run id and the rank of the file names.
            None (a disabled timer) checks the arguments and logs nothing.
        folder: the run's output folder.
        files: returns the artifact paths; called only with ``artifacts``.
        prefix: put before every name; a ``/`` is added after a non-empty prefix lacking one.
        stats: ``"mean"`` or ``"all"`` (min, mean, median, max, stdev, p95, count).
        artifacts: also upload the stats files, Chrome trace and report.
        timeout_s: the longest wait for a tracking server, in seconds.
        names: ``"maeltrace"`` or ``"deep500"`` (Deep500's names; see `maeltrace.sinks.base`).
        run_id: the MLflow run to log to, in the store of the current tracking URI.

    Returns:
        The metrics, by the names logged (also when they could not be delivered).

    Raises:
        ImportError: MLflow is not installed; the message says
            ``pip install 'maeltrace[mlflow]'``.
        TypeError: ``prefix`` is not a string.
        ValueError: ``stats``, ``names`` or ``timeout_s`` is not one that works.
    """
    mlflow = require("mlflow", "mlflow")
    check_arguments(prefix, stats, names)
    if isinstance(timeout_s, bool) or not (
        isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    if summary is None:
        return {}
    name = str(summary.metadata.get("run_id", ""))
    try:
        values = mlflow_metric_names(metric_values(summary, prefix, stats, names=names))
        paths = _files(files) if artifacts else []
        delivery = _Delivery(
            mlflow=mlflow,
            target=_target(mlflow, folder, run_id, name),
            metrics=values,
            files=paths,
            run_name=name,
            tags=run_tags(summary),
            timeout_s=float(timeout_s),
        )
    except Exception as exc:  # a sink never stops training
        warn_failure(SINK, "nothing was logged", exc, None)
        return {}
    error = delivery.run()
    if error is not None:
        pending = PendingFile(pending_path(folder, SINK, rank_suffix_of(summary.metadata)))
        _keep(pending, name, values, error, delivery)
    return values


def run_tags(summary: Summary) -> dict[str, str]:
    """The tags maeltrace gives the run it logs to: ``maeltrace.run_id`` (the summary's run id,
    which finds the run's traces and files), ``maeltrace.host`` and ``maeltrace.warmup`` (the
    samples per key that the ``/steady/`` values skip)."""
    return {
        "maeltrace.run_id": str(summary.metadata.get("run_id", "")),
        "maeltrace.host": socket.gethostname(),
        "maeltrace.warmup": str(summary.warmup),
    }


def log_mlflow(
    timer: Timer, prefix: str = "", stats: str = "mean", **options: Any
) -> dict[str, float]:
    """`maeltrace.Timer.log_mlflow_all` as a function (the older entry point); the options are
    those of `log_summary`."""
    return timer.log_mlflow_all(prefix, stats, **options)


class MlflowSeries:
    """Each epoch's statistics as a step series of one MLflow run, for `maeltrace.sinks.live`.

    The run is the one `log_summary` would use: the run active on the training thread at the
    first epoch's end (`capture`), else ``MLFLOW_RUN_ID``, else a new run named by the
    maeltrace run id (in the SQLite fallback store where `log_summary` would use it), left
    running until `close` and then used by the final `log_summary` too. Calls run on the live
    thread, each bounded by `bounded_http`.

    Args:
        folder: returns the run's output folder (the SQLite fallback store).
        run_name: the maeltrace run id.
        timeout_s: the longest wait for one request to a tracking server.
    """

    name = SINK

    def __init__(self, folder: Callable[[], Path], run_name: str, timeout_s: float) -> None:
        self._folder = folder
        self._run_name = run_name
        self._timeout_s = timeout_s
        self._active: str | None = None
        self._captured = False
        self._client: Any = None
        self._run_id: str | None = None
        self._started: str | None = None

    def capture(self) -> None:
        """On the training thread: remembers its active run, where MLflow is imported (an
        active run means it is; maeltrace never imports it there)."""
        if self._captured:
            return
        self._captured = True
        mlflow = sys.modules.get("mlflow")
        active = getattr(mlflow, "active_run", None)
        run = active() if callable(active) else None
        if run is not None:
            self._active = str(run.info.run_id)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Logs ``values`` at ``step``, starting the run on the first call.

        Raises:
            Exception: whatever MLflow raised; the caller keeps the values.
        """
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        with bounded_http(self._timeout_s):
            if self._run_id is None:
                mlflow = require("mlflow", "mlflow")
                target = _target(mlflow, self._folder(), self._active, self._run_name, active=False)
                client = MlflowClient(tracking_uri=target.uri)
                tags = {"maeltrace.run_id": self._run_name, "maeltrace.host": socket.gethostname()}
                run_id, started = _open_run(mlflow, client, target, self._run_name, tags)
                self._client, self._run_id, self._started = client, run_id, started
                if started is not None:
                    _LIVE_RUNS[self._run_name] = _Target(target.uri, run_id)
            now_ms = int(time.time() * 1000)
            metrics = [Metric(k, v, now_ms, step) for k, v in mlflow_metric_names(values).items()]
            self._client.log_batch(self._run_id, metrics=metrics, synchronous=True)

    def close(self) -> None:
        """Ends the run it started (``FINISHED``), on the thread that started it; a run that
        was there stays running."""
        started, self._started = self._started, None
        with bounded_http(self._timeout_s):
            if started == "fluent":
                require("mlflow", "mlflow").end_run("FINISHED")
            elif started == "client":
                self._client.set_terminated(self._run_id, "FINISHED")


def _files(files: Callable[[], list[Path]]) -> list[Path]:
    try:
        return files()
    except Exception as exc:  # the metrics still go
        warn_failure(SINK, "the stats files and trace were not written", exc, None)
        return []


@dataclass(frozen=True)
class _Target:
    """Where metrics go: a tracking URI and an existing run, or how to start one."""

    uri: str
    run_id: str | None
    """An existing run, left running; None starts one."""
    artifact_root: Path | None = None
    """With the SQLite fallback store: the artifact folder of its experiment."""

    @property
    def local(self) -> bool:
        return self.uri.partition(":")[0].lower() in _LOCAL_SCHEMES


_LIVE_RUNS: dict[str, _Target] = {}
"""The run each maeltrace run id's live series (`MlflowSeries`) started, by that run id: the
final summary goes there too, where nothing names a run."""


def _target(
    mlflow: ModuleType, folder: Path, run_id: str | None, run_name: str = "", active: bool = True
) -> _Target:
    """The run a call logs to (the one rule of `log_summary` and `MlflowSeries`).

    Args:
        active: ask for the calling thread's active run (a worker thread has none).
    """
    uri: str = mlflow.get_tracking_uri()
    if run_id is not None:
        return _Target(uri, run_id)
    current = mlflow.active_run() if active else None
    if current is not None:
        return _Target(uri, current.info.run_id)
    named = env_str(MLFLOW_RUN_ID)  # mlflow.start_run would consume it
    if named:
        return _Target(uri, named)
    live = _LIVE_RUNS.get(run_name) if run_name else None
    if live is not None:
        return live
    if not mlflow.is_tracking_uri_set() and uri.startswith("file:"):
        folder = folder.resolve()
        folder.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        return _Target(f"sqlite:///{folder / 'mlflow.db'}", None, folder / "mlartifacts")
    return _Target(uri, None)


@dataclass
class _Delivery:
    """One call's MLflow work, on a worker thread that the caller waits for (bounded)."""

    mlflow: ModuleType
    target: _Target
    metrics: dict[str, float]
    files: Sequence[Path]
    run_name: str
    tags: dict[str, str]
    timeout_s: float
    run_id: str | None = None
    error: BaseException | None = None
    metrics_done: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> str | None:
        """Delivers; returns None when the metrics are in (having warned if the artifacts
        are not), else what went wrong."""
        # Loaded here, on the caller's thread, so that the wait below is the tracker's only.
        from mlflow.entities import Metric  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401

        worker = threading.Thread(target=self._work, name="maeltrace-mlflow", daemon=True)
        worker.start()
        finished = self.done.wait(None if self.target.local else self.timeout_s)
        where = self.target.uri
        if finished and self.error is None:
            return None
        if finished and self.metrics_done.is_set():
            assert self.error is not None
            warn_failure(SINK, f"artifacts were not logged to run {self.run_id}", self.error, None)
            return None
        if self.metrics_done.is_set():
            return None  # the metrics are in; the artifacts are still uploading
        if finished:
            assert self.error is not None
            error = f"{type(self.error).__name__}: {self.error}"
        else:
            error = f"no answer from {where} within {self.timeout_s:g} s"
        return error

    def _work(self) -> None:
        with bounded_http(self.timeout_s):
            try:
                self._deliver()
            except BaseException as exc:  # reported by the waiting caller
                self.error = exc
            finally:
                self.done.set()

    def _deliver(self) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.target.uri)
        self.run_id, started = _open_run(self.mlflow, client, self.target, self.run_name, self.tags)
        started_fluent, started_client = started == "fluent", started == "client"
        tags: list[RunTag] = []
        if not (started_fluent or started_client):
            # Someone else's run: add maeltrace's tags where the run has none of that name.
            held = client.get_run(self.run_id).data.tags
            tags = [RunTag(k, v) for k, v in self.tags.items() if k not in held]
        status = "FAILED"
        try:
            now_ms = int(time.time() * 1000)
            metrics = [Metric(k, v, now_ms, 0) for k, v in self.metrics.items()]
            if metrics or tags:
                client.log_batch(self.run_id, metrics=metrics, tags=tags, synchronous=True)
            self.metrics_done.set()
            for path in self.files:
                client.log_artifact(self.run_id, str(path), ARTIFACT_PATH)
            status = "FINISHED"
        finally:
            with contextlib.suppress(Exception):  # the error that matters is already raised
                if started_fluent:
                    self.mlflow.end_run(status)
                elif started_client:
                    client.set_terminated(self.run_id, status)


def _open_run(
    mlflow: ModuleType, client: Any, target: _Target, run_name: str, tags: Mapping[str, str]
) -> tuple[str, str | None]:
    """The target's run id, starting the run when it names none (on the calling thread).

    Returns:
        The run id, and how it was started: ``"fluent"`` (``mlflow.start_run``, this thread's
        active run now), ``"client"`` (the SQLite fallback store) or None (it existed).
    """
    if target.run_id is not None:
        return target.run_id, None
    if target.artifact_root is not None:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(
                EXPERIMENT, artifact_location=target.artifact_root.as_uri()
            )
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        return str(run.info.run_id), "client"
    # The fluent API picks the experiment as the user's own runs would (mlflow.set_experiment,
    # MLFLOW_EXPERIMENT_NAME/ID); the run is this thread's, never the caller's active run.
    run = mlflow.start_run(run_name=run_name, tags=dict(tags))
    return str(run.info.run_id), "fluent"


def _keep(
    pending: PendingFile, run_id: str, values: Mapping[str, float], error: str, delivery: _Delivery
) -> None:
    entry = pending_entry(
        SINK,
        run_id,
        error,
        metrics=dict(values),
        tracking_uri=delivery.target.uri,
        mlflow_run_id=delivery.run_id,
    )
    try:
        pending.add(entry)
        kept: Path | None = pending.path
    except OSError as exc:
        kept = None
        error += f" (and the pending file could not be written: {exc})"
    warn_failure(SINK, "metrics were not logged", error, kept)

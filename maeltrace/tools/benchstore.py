"""``maeltrace bench``'s MLflow store: a bench as nested runs, where ``maeltrace compare`` reads."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from maeltrace._imports import require
from maeltrace.environment import MLFLOW_TRACKING_URI, env_str
from maeltrace.report import Summary
from maeltrace.sinks import metric_values
from maeltrace.sinks.mlflow import ARTIFACT_PATH, bounded_http, mlflow_metric_names
from maeltrace.tools.benchfiles import read_app_info, read_bench

__all__ = [
    "BENCH_APP_TAG",
    "BENCH_EXPERIMENT",
    "BENCH_TIMEOUT_S",
    "PARENT_RUN_TAG",
    "STATS_ARTIFACT",
    "bench_store",
    "bench_tracking_uri",
    "log_bench",
    "log_bench_report",
    "sqlite_path",
]

BENCH_EXPERIMENT = "maeltrace-bench"
"""The experiment of ``maeltrace bench``'s runs."""

BENCH_APP_TAG = "maeltrace.app"
"""The tag of a bench's child run that names its app (`log_bench`; ``maeltrace compare``
names the summary it reads from the run by it)."""

PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's tag of a nested run: its parent's run id (a bench's app runs carry the bench's)."""

STATS_ARTIFACT = f"{ARTIFACT_PATH}/stats.json"
"""The artifact of an app's run that holds its summary (``maeltrace compare`` reads it)."""

BENCH_TIMEOUT_S = 10.0
"""Per HTTP request to a tracking server while a bench is logged or read back (one retry)."""


def bench_store(root: Path) -> tuple[str, Path]:
    """The default store of ``maeltrace bench``: the tracking URI of the SQLite file
    ``<root>/mlflow.db`` and its artifact folder ``<root>/mlartifacts``, absolute."""
    folder = root.resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def bench_tracking_uri(tracking_uri: str | None, root: Path) -> tuple[str, Path | None]:
    """Where ``maeltrace bench`` logs: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
    `bench_store` in ``root`` (not created here: `log_bench` does); second, the artifact folder
    of a new experiment: ``mlartifacts`` beside a SQLite file (MLflow's default, ``./mlruns``,
    would land in the working folder), None for a tracking server, which has its own."""
    uri = tracking_uri or env_str(MLFLOW_TRACKING_URI)
    if not uri:
        return bench_store(root)
    database = sqlite_path(uri)
    return uri, database.resolve().parent / "mlartifacts" if database is not None else None


def log_bench(
    folder: Path,
    apps: Sequence[str],
    *,
    tracking_uri: str | None = None,
    default_root: Path,
    timeout_s: float = BENCH_TIMEOUT_S,
) -> dict[str, object]:
    """Logs a ``maeltrace bench`` folder to MLflow: a run for the bench in experiment
    `BENCH_EXPERIMENT` (named and tagged ``maeltrace.bench`` by the bench id), and under it a
    nested run per app that finished (tags `PARENT_RUN_TAG`, `BENCH_APP_TAG`,
    ``maeltrace.run_id``), holding the app's configuration as parameters, its statistics as
    metrics (``maeltrace/<key>[/gpu]/<steady|all>/<field>``, all fields of
    `maeltrace.sinks.STATS_FIELDS`, warm-up left out as in its tables) plus ``wall_s``, and
    its stats files, ``app.json`` and Chrome trace under `ARTIFACT_PATH` (``maeltrace compare``
    reads `STATS_ARTIFACT` back). The default store's folder ``default_root`` is created if
    missing.

    Args:
        folder: the bench folder (with ``bench.json``).
        apps: the names of the apps to log, each with its folder in ``folder``.
        tracking_uri: where to log; default as `bench_tracking_uri` says.
        default_root: the output root, home of the default SQLite store.
        timeout_s: per HTTP request to a tracking server (one retry).

    Returns:
        ``bench.json``'s ``mlflow`` entry: tracking_uri, experiment, parent_run_id,
        runs (app name -> run id), ui (a command that opens the MLflow UI on this store).

    Raises:
        ImportError: MLflow is not installed.
        Exception: whatever MLflow raises when the store refuses or cannot be reached.
    """
    require("mlflow", "mlflow")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri, artifact_root = bench_tracking_uri(tracking_uri, default_root)
    if uri == bench_store(default_root)[0]:
        default_root.mkdir(parents=True, exist_ok=True)  # MLflow creates the file, not its folder
    bench = read_bench(folder).manifest
    bench_id = str(bench["bench_id"])
    with bounded_http(timeout_s):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(BENCH_EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(
                BENCH_EXPERIMENT,
                artifact_location=artifact_root.as_uri() if artifact_root else None,
            )
        )
        host = socket.gethostname()
        parent = client.create_run(
            experiment_id,
            run_name=bench_id,
            tags={"maeltrace.bench": bench_id, "maeltrace.host": host},
        )
        parent_id = parent.info.run_id
        options = {k: str(v) for k, v in bench.get("options", {}).items() if v is not None}
        runs: dict[str, str] = {}
        status = "FAILED"
        try:
            client.log_batch(parent_id, params=[Param(k, v) for k, v in options.items()])
            for name in apps:
                app_folder = folder / name
                info = read_app_info(app_folder / "app.json")
                summary = Summary.load(app_folder / "stats.json")
                child = client.create_run(
                    experiment_id,
                    run_name=name,
                    tags={
                        PARENT_RUN_TAG: parent_id,
                        "maeltrace.bench": bench_id,
                        BENCH_APP_TAG: name,
                        "maeltrace.run_id": str(info.get("run_id", "")),
                        "maeltrace.host": host,
                    },
                )
                run_id = child.info.run_id
                params = {
                    "framework": info.get("framework"),
                    "framework_version": info.get("framework_version"),
                    "seed_app": info.get("seed_app"),
                    **info.get("config", {}),
                }
                now_ms = int(time.time() * 1000)
                values = mlflow_metric_names(metric_values(summary, "", "all"))
                values["wall_s"] = float(info.get("wall_s", 0.0))
                client.log_batch(
                    run_id,
                    metrics=[Metric(k, v, now_ms, 0) for k, v in values.items()],
                    params=[Param(k, str(v)) for k, v in params.items() if v is not None],
                    tags=[RunTag("mlflow.note.content", str(info.get("title", "")))],
                    synchronous=True,
                )
                for file in ("stats.json", "stats.md", "stats.csv", "app.json", "trace.json"):
                    if (app_folder / file).is_file():
                        client.log_artifact(run_id, str(app_folder / file), ARTIFACT_PATH)
                client.set_terminated(run_id, "FINISHED")
                runs[name] = run_id
            status = "FINISHED"
        finally:
            with contextlib.suppress(Exception):  # the error that matters is already raised
                client.set_terminated(parent_id, status)
    ui = f"mlflow ui --backend-store-uri {uri}"
    if artifact_root is not None:
        ui += f" --default-artifact-root {artifact_root.as_uri()}"
    return {
        "tracking_uri": uri,
        "experiment": BENCH_EXPERIMENT,
        "parent_run_id": parent_id,
        "runs": runs,
        "ui": ui,
    }


def log_bench_report(
    folder: Path, logged: Mapping[str, object], timeout_s: float = BENCH_TIMEOUT_S
) -> None:
    """Adds a bench's report to its MLflow runs: ``report.md``, ``report.html`` and the apps'
    images to the bench's run under ``report/`` (as laid out on disk, so the page's images
    resolve), and each app's images to its own run under `ARTIFACT_PATH`.

    Args:
        folder: the bench folder.
        logged: what `log_bench` returned.
        timeout_s: per HTTP request to a tracking server (one retry).
    """
    require("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    runs = logged["runs"]
    assert isinstance(runs, Mapping)
    with bounded_http(timeout_s):
        client = MlflowClient(tracking_uri=str(logged["tracking_uri"]))
        parent = str(logged["parent_run_id"])
        for name in ("report.md", "report.html"):
            if (folder / name).is_file():
                client.log_artifact(parent, str(folder / name), "report")
        for app, run_id in runs.items():
            for image in sorted((folder / app).glob("*.png")):
                client.log_artifact(parent, str(image), f"report/{app}")
                client.log_artifact(str(run_id), str(image), ARTIFACT_PATH)

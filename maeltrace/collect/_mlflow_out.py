"""The summary service's sinks: run summaries (dicts) to MLflow and W&B, named as the Timer names.

A run summary (`maeltrace.collect._summaries.RunSummary.to_dict`) becomes one MLflow run per
maeltrace run id, found by its ``maeltrace.run_id`` tag in the experiment (else created), and
updated each time a process of the run reports. The summaries stay dicts (they hold what only
the service knows: processes, pooled statistics, the slowest rank); `clock_metric_name` adapts
their clock labels (``cpu``, ``gpu``, ``cpu.first_call``, ``gpu.first_call``) to the one name
scheme of `maeltrace.sinks.base.metric_name`, so that the names are those of
``Timer.log_mlflow_all(stats="all")`` over every sample (the run span's statistics keep the
warm-up, so the samples segment is always ``all``):

- one process: ``<row>/all/<field>`` for every field of `maeltrace.sinks.base.STATS_FIELDS`,
  and for every throughput and memory figure the row has (`maeltrace.report.WORK_FIELDS`:
  ``items``, ``tokens``, ``items_per_s``, ``tokens_per_s``, ``mfu``, ``peak_memory_bytes``);
- several ranks (or a world size above 1): ``<row>/all/<field>`` for the pooled fields (count,
  total, mean, min, max, stdev, and the pooled work figures some process has: ``items_per_s``
  and ``tokens_per_s`` the sum of the processes' rates, the job's aggregate throughput; see
  `maeltrace.collect._summaries.WORK_POOLING`), ``<row>/all/<process>/mean`` per process
  (``rank0``, ``rank1``, ...) and ``<row>/all/<process>/<field>`` for each work figure that
  process has, ``<row>/all/slowest_rank`` and ``<row>/all/skew``,

``<row>`` being ``maeltrace/<key>[/gpu][/first_call]``.

Each update is logged at step = number of processes reported, so the latest value of a metric is
always the most complete one. Names go through `maeltrace.sinks.base.mlflow_metric_name`.

Failures: a `maeltrace.sinks.base.Publisher` retries, bounds MLflow's HTTP client
(`maeltrace.sinks.base.bounded_http`) and keeps what stays undelivered in a
`maeltrace.sinks.base.PendingFile`. ``mlflow`` and ``wandb`` are imported when a sink first
logs, not with this module.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from maeltrace.environment import MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, env_str
from maeltrace.errors import SinkError
from maeltrace.report import WORK_FIELDS
from maeltrace.sinks.base import (
    STATS_FIELDS,
    PendingFile,
    Publisher,
    Sink,
    bounded_http,
    metric_name,
    mlflow_metric_name,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "MlflowSink",
    "PendingFile",
    "Publisher",
    "Sink",
    "SinkError",
    "WandbSink",
    "clock_metric_name",
    "summary_metrics",
    "summary_tags",
]

DEFAULT_EXPERIMENT: Final = "maeltrace"
"""The MLflow experiment (and W&B project) when ``MLFLOW_EXPERIMENT_NAME`` is not set."""

POOLED_FIELDS: Final = ("count", "total", "mean", "min", "max", "stdev")
"""The statistics logged pooled for runs of several processes (see `summary_metrics`); the
pooled `WORK_FIELDS` follow where present."""

MAX_METRICS_PER_BATCH: Final = 1000
"""MLflow's limit of metrics per ``log-batch`` request."""

_MAX_NAME = 250  # MLflow's limit on run names
_MAX_TAG_VALUE = 5000  # under MLflow's 8000, for comma-joined host lists


# -- names and values --------------------------------------------------------------------------


def clock_metric_name(key: str, clock: str, *rest: str) -> str:
    """The MLflow name of one metric of a summary's ``key`` on ``clock`` (``cpu``, ``gpu``,
    ``cpu.first_call``, ``gpu.first_call``): `maeltrace.sinks.base.metric_name` with the row's
    device and compiled flags over every sample (``all``), cleaned by
    `maeltrace.sinks.base.mlflow_metric_name`."""
    clock_name, _, first_call = clock.partition(".")
    return mlflow_metric_name(
        metric_name(
            key, *rest, device=clock_name != "cpu", compiled=bool(first_call), samples="all"
        )
    )


def _process_segment(label: str) -> str:
    # ``rank0`` as is; an unranked ``host/pid`` stays one segment.
    return label.replace("/", "_")


def _single_process(summary: Mapping[str, Any]) -> bool:
    world = summary.get("world_size")
    return int(summary.get("process_count", 0)) <= 1 and not (isinstance(world, int) and world > 1)


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow (and W&B) metrics of a run summary; see the module's description.

    Args:
        summary: `RunSummary.to_dict` output, with statistics.

    Returns:
        metric name -> value, finite floats only; of two metrics with one name, the first.
    """
    out: dict[str, float] = {}

    def put(name: str, value: float) -> None:
        out.setdefault(name, value)

    processes = summary.get("processes", {})
    if _single_process(summary):
        for process in processes.values():
            for key, clocks in process["stats"].items():
                for clock, stats in clocks.items():
                    for field_name in (*STATS_FIELDS, *WORK_FIELDS):
                        if field_name in stats:
                            put(clock_metric_name(key, clock, field_name), float(stats[field_name]))
        return {name: value for name, value in out.items() if math.isfinite(value)}
    for key, clocks in summary.get("cross_rank", {}).items():
        for clock, entry in clocks.items():
            pooled = entry["pooled"]
            for field_name in (*POOLED_FIELDS, *WORK_FIELDS):
                if field_name in pooled:
                    put(clock_metric_name(key, clock, field_name), float(pooled[field_name]))
            for label, mean in entry["mean_by_process"].items():
                segment = _process_segment(label)
                put(clock_metric_name(key, clock, segment, "mean"), float(mean))
                stats = processes.get(label, {}).get("stats", {}).get(key, {}).get(clock, {})
                for field_name in WORK_FIELDS:
                    if field_name in stats:
                        put(
                            clock_metric_name(key, clock, segment, field_name),
                            float(stats[field_name]),
                        )
            if entry.get("slowest_rank") is not None:
                put(clock_metric_name(key, clock, "slowest_rank"), float(entry["slowest_rank"]))
            if entry.get("skew") is not None:
                put(clock_metric_name(key, clock, "skew"), float(entry["skew"]))
    return {name: value for name, value in out.items() if math.isfinite(value)}


def _run_key(run_id: str) -> str:
    """A hash of the run id, searchable whatever characters the id holds."""
    return hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def summary_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a run's MLflow run: its id, services, hosts, world size, processes."""

    def joined(values: Any) -> str:
        return ", ".join(str(v) for v in values)[:_MAX_TAG_VALUE]

    run_id = str(summary["run_id"])
    tags = {
        "maeltrace.run_id": run_id[:_MAX_TAG_VALUE],
        "maeltrace.run_key": _run_key(run_id),
        "service.name": joined(summary.get("services", ())),
        "host.name": joined(summary.get("hosts", ())),
        "maeltrace.processes": str(summary.get("process_count", 0)),
        "maeltrace.finished": str(bool(summary.get("finished"))).lower(),
    }
    if summary.get("world_size") is not None:
        tags["maeltrace.world_size"] = str(summary["world_size"])
    return tags


# -- MLflow ------------------------------------------------------------------------------------


def _experiment_name(experiment: str | None) -> str:
    return experiment or env_str(MLFLOW_EXPERIMENT_NAME, DEFAULT_EXPERIMENT)


class MlflowSink:
    """Logs run summaries to MLflow: one MLflow run per maeltrace run id.

    Args:
        tracking_uri: the tracking server (``http://127.0.0.1:5000``) or store
            (``sqlite:///mlflow.db``).
        experiment: the experiment; default ``MLFLOW_EXPERIMENT_NAME``, else ``maeltrace``.
        request_timeout_s: how long one HTTP request to the server may take.
    """

    name = "mlflow"

    def __init__(
        self, tracking_uri: str, *, experiment: str | None = None, request_timeout_s: float = 30.0
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = _experiment_name(experiment)
        self.request_timeout_s = request_timeout_s
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}
        self._finished: set[str] = set()

    def log(self, summary: Mapping[str, Any]) -> str:
        """Logs a summary: finds or makes the run, then one ``log_batch`` with the tags and up to
        1000 metrics (more go in further batches), and marks the run finished once every process
        reported.

        Returns:
            The MLflow run id.

        Raises:
            SinkError: MLflow is unreachable (retryable) or refused the request.
        """
        from mlflow.exceptions import MlflowException

        run_id = str(summary["run_id"])
        try:
            with bounded_http(self.request_timeout_s):
                return self._log(summary)
        except MlflowException as err:
            # The run may be gone, or a timed-out create may have made it after all: the next
            # try looks it up again rather than trusting (or duplicating) what it knew.
            self._runs.pop(run_id, None)
            status = int(err.get_http_status_code())  # type: ignore[no-untyped-call]
            retryable = status >= 500 or status in (404, 408, 429)
            raise SinkError(f"MLflow: {err.message}", retryable=retryable) from err
        except Exception as err:  # requests, SQL stores, OS errors: the store is not there
            self._runs.pop(run_id, None)
            raise SinkError(f"MLflow: {type(err).__name__}: {err}", retryable=True) from err

    def _log(self, summary: Mapping[str, Any]) -> str:
        from mlflow.entities import Metric, RunTag

        run_id = str(summary["run_id"])
        client = self._get_client()
        mlflow_run = self._find_or_create(client, summary)
        now_ms = int(time.time() * 1000)
        step = int(summary.get("process_count", 1))
        metrics = [
            Metric(name, value, now_ms, step) for name, value in summary_metrics(summary).items()
        ]
        tags = [RunTag(k, v) for k, v in summary_tags(summary).items()]
        # One call per update; more than MLflow's 1000 metrics per call spill into more.
        for start in range(0, max(1, len(metrics)), MAX_METRICS_PER_BATCH):
            batch = metrics[start : start + MAX_METRICS_PER_BATCH]
            first = start == 0
            client.log_batch(
                mlflow_run, metrics=batch, tags=tags if first else (), synchronous=True
            )
        if summary.get("finished") and run_id not in self._finished:
            # Once: it also prints the run's address, which is worth one line per run.
            client.set_terminated(mlflow_run, "FINISHED")
            self._finished.add(run_id)
        return mlflow_run

    def _get_client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _get_experiment_id(self, client: MlflowClient) -> str:
        from mlflow.exceptions import MlflowException

        if self._experiment_id is None:
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                try:
                    self._experiment_id = client.create_experiment(self.experiment)
                except MlflowException:
                    # Made meanwhile by someone else: use theirs.
                    experiment = client.get_experiment_by_name(self.experiment)
                    if experiment is None:
                        raise
                    self._experiment_id = str(experiment.experiment_id)
            else:
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment.experiment_id)
                self._experiment_id = str(experiment.experiment_id)
        return self._experiment_id

    def _find_or_create(self, client: MlflowClient, summary: Mapping[str, Any]) -> str:
        run_id = str(summary["run_id"])
        known = self._runs.get(run_id)
        if known is not None:
            return known
        experiment_id = self._get_experiment_id(client)
        # MLflow's filter strings have no escapes: quote with a mark the id does not hold, or
        # search the id's hash when it holds both.
        if "'" not in run_id and len(run_id) <= _MAX_TAG_VALUE:
            query = f"tags.`maeltrace.run_id` = '{run_id}'"
        elif '"' not in run_id and len(run_id) <= _MAX_TAG_VALUE:
            query = f'tags.`maeltrace.run_id` = "{run_id}"'
        else:
            query = f"tags.`maeltrace.run_key` = '{_run_key(run_id)}'"
        found = client.search_runs(
            [experiment_id],
            filter_string=query,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            mlflow_run = str(found[0].info.run_id)
        else:
            created = client.create_run(
                experiment_id, tags=summary_tags(summary), run_name=_run_name(summary)
            )
            mlflow_run = str(created.info.run_id)
        self._runs[run_id] = mlflow_run
        return mlflow_run


def _run_name(summary: Mapping[str, Any]) -> str:
    services = summary.get("services") or ()
    run_id = str(summary["run_id"])
    return (f"{services[0]}-{run_id}" if services else run_id)[:_MAX_NAME]


# -- Weights & Biases --------------------------------------------------------------------------

_WANDB_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")


def _wandb_id(run_id: str) -> str:
    """A W&B run id for a run id: its own characters where W&B allows them, else a hash."""
    cleaned = _WANDB_ID_BAD.sub("-", run_id)
    if cleaned == run_id and len(run_id) <= 64:
        return run_id
    return f"{cleaned[:40]}-{_run_key(run_id)[:16]}"


class WandbSink:
    """Logs run summaries to Weights & Biases: one W&B run per maeltrace run id, resumed on
    each update, with the summary's metrics in one ``log`` call (one history row).

    Online or offline as ``WANDB_MODE`` says; offline runs need no key and stay under
    ``directory``.

    Args:
        project: the W&B project; default ``WANDB_PROJECT``, else ``maeltrace``.
        directory: where W&B writes its files; default its own choice.
    """

    name = "wandb"

    def __init__(self, *, project: str | None = None, directory: str | None = None) -> None:
        self.project = project or env_str(WANDB_PROJECT, DEFAULT_EXPERIMENT)
        self.directory = directory

    def log(self, summary: Mapping[str, Any]) -> str:
        """Logs a summary.

        Returns:
            The W&B run id.

        Raises:
            SinkError: W&B refused (no credentials: not retryable) or failed.
        """
        import wandb
        from wandb.errors import UsageError

        run_id = str(summary["run_id"])
        if self.directory is not None:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(
                project=self.project,
                id=_wandb_id(run_id),
                name=run_id,
                resume="allow",
                reinit="create_new",
                dir=self.directory,
                config=summary_tags(summary),
                settings=wandb.Settings(
                    silent=True, console="off", x_disable_stats=True, x_disable_machine_info=True
                ),
            )
            try:
                run.log(summary_metrics(summary))
            finally:
                run.finish()
        except UsageError as err:
            raise SinkError(f"W&B: {err}", retryable=False) from err
        except Exception as err:  # wandb's network and service errors: try again later
            raise SinkError(f"W&B: {type(err).__name__}: {err}", retryable=True) from err
        return str(run.id)

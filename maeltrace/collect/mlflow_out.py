"""Where run summaries go: MLflow (and W&B), with bounded retries and a pending file.

A run summary (`maeltrace.collect.summaries.RunSummary.to_dict`) becomes one MLflow run per
maeltrace run id, found by its ``maeltrace.run_id`` tag in the experiment (else created), and
updated each time a process of the run reports. Metric names:

- one process: ``<key>/<clock>/<field>`` for every `maeltrace.TimeStats` field of the process;
- several ranks (or a world size above 1): ``<key>/<clock>/<field>`` for the pooled fields
  (count, total, mean, min, max, stdev), ``<key>/<clock>/<process>/mean`` per process
  (``rank0``, ``rank1``, ...), ``<key>/<clock>/slowest_rank`` and ``<key>/<clock>/skew``.

Clocks are ``cpu``, ``gpu``, ``cpu.first_call`` and ``gpu.first_call``. Each update is logged at
step = number of processes reported, so the latest value of a metric is always the most complete
one. Key characters MLflow does not allow in names become ``_``.

Failures: a `Publisher` tries a sink a few times with exponential backoff (MLflow's own HTTP
client is bounded meanwhile through ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT``, which by default retry for minutes), then appends the summary to
a `PendingFile` (JSON lines). The pending summaries are sent again after the next success, when
the service starts, and on a timer (`Publisher.resend`).

``mlflow`` and ``wandb`` are imported when a sink first logs, not with this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from maeltrace.collect.summaries import FIELDS
from maeltrace.errors import SinkError
from maeltrace.files import append_line, atomic_write_bytes, read_lines

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
    "metric_name",
    "summary_metrics",
    "summary_tags",
]

_log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT: Final = "maeltrace"
"""The MLflow experiment (and W&B project) when ``MLFLOW_EXPERIMENT_NAME`` is not set."""

POOLED_FIELDS: Final = ("count", "total", "mean", "min", "max", "stdev")
"""The fields logged for runs of several processes (see `summary_metrics`)."""

MAX_METRICS_PER_BATCH: Final = 1000
"""MLflow's limit of metrics per ``log-batch`` request."""

_MAX_NAME = 250  # MLflow's limit on metric and tag names
_MAX_TAG_VALUE = 5000  # under MLflow's 8000, for comma-joined host lists
# MLflow names allow letters, digits, _ - . space / (and : outside Windows: left out here).
_NAME_BAD = re.compile(r"[^\w.\- /]")


class Sink(Protocol):
    """Somewhere a run summary is logged."""

    name: str

    def log(self, summary: Mapping[str, Any]) -> str:
        """Logs one run's summary; returns the id it has there.

        Raises:
            SinkError: it could not be logged.
        """
        ...


# -- names and values --------------------------------------------------------------------------


def _segment(text: str) -> str:
    """One part of a metric name: MLflow's characters only, no empty, ``.`` or ``..`` part
    (which MLflow refuses as they would resolve to another path)."""
    cleaned = _NAME_BAD.sub("_", text)
    parts = [p if p.strip(" .") else "_" for p in cleaned.split("/")]
    return "/".join(parts)


def metric_name(key: str, clock: str, *rest: str) -> str:
    """``<key>/<clock>/<rest...>`` as an MLflow metric name.

    Characters MLflow does not allow become ``_``; a name over MLflow's 250 characters keeps
    its end and a hash of the whole key.
    """
    tail = "/".join(_segment(p) for p in (clock, *rest))
    head = _segment(key)
    if len(head) + 1 + len(tail) > _MAX_NAME:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        room = max(1, _MAX_NAME - len(tail) - len(digest) - 3)
        head = f"{head[:room].rstrip('/ .') or '_'}_{digest}"
    return f"{head}/{tail}"


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
        metric name -> value, finite floats only.
    """
    out: dict[str, float] = {}
    if _single_process(summary):
        for process in summary.get("processes", {}).values():
            for key, clocks in process["stats"].items():
                for clock, stats in clocks.items():
                    for field_name in FIELDS:
                        out[metric_name(key, clock, field_name)] = float(stats[field_name])
        return out
    for key, clocks in summary.get("cross_rank", {}).items():
        for clock, entry in clocks.items():
            for field_name in POOLED_FIELDS:
                out[metric_name(key, clock, field_name)] = float(entry["pooled"][field_name])
            for label, mean in entry["mean_by_process"].items():
                out[metric_name(key, clock, _process_segment(label), "mean")] = float(mean)
            if entry.get("slowest_rank") is not None:
                out[metric_name(key, clock, "slowest_rank")] = float(entry["slowest_rank"])
            if entry.get("skew") is not None:
                out[metric_name(key, clock, "skew")] = float(entry["skew"])
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


# -- the pending file --------------------------------------------------------------------------


class PendingFile:
    """Summaries that a sink could not take yet: one JSON line each, appended.

    Only the latest summary of each run matters (a run's summary only grows), so `load` keeps
    that one and `replace` rewrites the file with what is still pending. Lines are appended and
    read by `maeltrace.files.append_line` and `maeltrace.files.read_lines`, so a full disk
    leaves no torn line and a torn line from a crash costs only itself. Used from one thread.

    Args:
        path: the file; its folder is made on the first write.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def add(self, summary: Mapping[str, Any]) -> None:
        """Appends a summary.

        Raises:
            OSError: the file cannot be written (disk full, say); it is left as it was.
            ValueError: the summary holds a value JSON cannot encode (NaN, say).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, _summary_line(summary), mode=0o600)

    def load(self) -> dict[str, dict[str, Any]]:
        """The pending summaries, latest per run id, in order of first appearance; lines that
        are not run summaries (a torn last line after a crash) are skipped with one warning."""
        found: dict[str, dict[str, Any]] = {}
        try:
            for _, obj in read_lines(self.path, parse=_summary_from_line):
                found[obj["run_id"]] = obj
        except FileNotFoundError:
            return {}
        return found

    def replace(self, summaries: Mapping[str, Mapping[str, Any]]) -> None:
        """Rewrites the file with exactly these summaries (atomically); removes it when none.

        Raises:
            OSError: the file cannot be written; it is left as it was.
        """
        if not summaries:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            self.path, b"".join(_summary_line(s) + b"\n" for s in summaries.values())
        )

    def __len__(self) -> int:
        return len(self.load())


def _summary_line(summary: Mapping[str, Any]) -> bytes:
    return json.dumps(summary, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _summary_from_line(line: bytes) -> dict[str, Any]:
    obj = json.loads(line)
    if not isinstance(obj, dict) or not isinstance(obj.get("run_id"), str):
        raise ValueError("not a run summary")
    return obj


# -- publishing with retries -------------------------------------------------------------------


class Publisher:
    """Logs summaries to one sink: a few tries with backoff, then the pending file.

    Used from one thread (the service's worker).

    Args:
        sink: where summaries go.
        pending: where they wait when the sink is down; None to drop them instead.
        attempts: tries per summary (at least 1).
        backoff_s: wait before the second try; doubled before each further one.
        sleep: waits (tests pass a fake).
    """

    def __init__(
        self,
        sink: Sink,
        pending: PendingFile | None,
        *,
        attempts: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.sink = sink
        self.pending = pending
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._sleep = sleep
        self.states: dict[str, str] = {}
        """Per run id: ``logged``, ``pending`` or ``failed: <why>`` (refused, not pending)."""
        self.ids: dict[str, str] = {}
        """Per run id, the id the sink gave it (the MLflow run id)."""

    def _try(self, summary: Mapping[str, Any], attempts: int) -> None:
        """Logs with up to ``attempts`` tries; raises the last `SinkError`."""
        for attempt in range(attempts):
            try:
                self.ids[str(summary["run_id"])] = self.sink.log(summary)
                return
            except SinkError as err:
                if not err.retryable or attempt == attempts - 1:
                    raise
                _log.info("%s: try %d failed (%s); retrying", self.sink.name, attempt + 1, err)
                self._sleep(self.backoff_s * 2**attempt)

    def publish(self, summary: Mapping[str, Any]) -> str:
        """Logs a summary, retrying; keeps it pending if the sink stays down, and after a
        success sends what was pending.

        Returns:
            The run's state afterwards: ``logged``, ``pending`` or ``failed: <why>``.
        """
        run_id = str(summary["run_id"])
        try:
            self._try(summary, self.attempts)
        except SinkError as err:
            if err.retryable and self.pending is not None:
                _log.warning(
                    "%s is down (%s); %s's summary is pending", self.sink.name, err, run_id
                )
                self.pending.add(summary)
                self.states[run_id] = "pending"
            else:
                _log.error("%s refused the summary of %s: %s", self.sink.name, run_id, err)
                self.states[run_id] = f"failed: {err}"
            return self.states[run_id]
        self.states[run_id] = "logged"
        self.resend(skip=run_id)
        return "logged"

    def resend(self, skip: str | None = None) -> int:
        """Sends the pending summaries again, one try each, stopping at the first that fails
        as the sink is down; what is left stays pending.

        Args:
            skip: a run id whose newer summary was just logged: its pending one is dropped.

        Returns:
            How many were sent.
        """
        if self.pending is None:
            return 0
        waiting = self.pending.load()
        if not waiting:
            return 0
        left = dict(waiting)
        left.pop(skip or "", None)
        sent = 0
        for run_id, summary in waiting.items():
            if run_id not in left:
                continue
            try:
                self._try(summary, 1)
            except SinkError as err:
                if err.retryable:
                    break  # still down: keep this one and the rest for the next round
                _log.error("%s refused the pending summary of %s: %s", self.sink.name, run_id, err)
                self.states[run_id] = f"failed: {err}"
            else:
                self.states[run_id] = "logged"
                sent += 1
            left.pop(run_id)
        if left != waiting:
            self.pending.replace(left)
        if sent:
            _log.info("%s: sent %d pending summaries", self.sink.name, sent)
        return sent

    def has_pending(self) -> bool:
        """Whether summaries wait in the pending file."""
        return self.pending is not None and self.pending.path.exists()


# -- MLflow ------------------------------------------------------------------------------------

_HTTP_LOCK = threading.Lock()


@contextlib.contextmanager
def _bounded_http(timeout_s: float) -> Iterator[None]:
    """Bounds MLflow's HTTP client for the duration: no retries of its own (the `Publisher`
    retries) and a request timeout. Values the user set in the environment stay."""
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
    }
    with _HTTP_LOCK:
        ours = [name for name in values if name not in os.environ]
        for name in ours:
            os.environ[name] = values[name]
        try:
            yield
        finally:
            for name in ours:
                os.environ.pop(name, None)


def _experiment_name(experiment: str | None) -> str:
    return experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


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
            with _bounded_http(self.request_timeout_s):
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
        self.project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_EXPERIMENT
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

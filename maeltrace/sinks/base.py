"""The sink contract: the Sink protocol, metric names, the pending file and bounded MLflow HTTP.

Both routes to a tracker use it: the Timer's ``log_mlflow_all``/``log_wb_all`` (through
`maeltrace.sinks.mlflow.log_summary` and `maeltrace.sinks.wandb.log_summary`) and the summary
service, ``maeltrace collect`` (`maeltrace.collect._mlflow_out`). It imports no tracker.

Metric names
------------

One scheme, `metric_name`. With the default ``names="maeltrace"``, every name begins with
`NAMESPACE` (``maeltrace/``), so that maeltrace's ``epoch`` never meets a trainer's own ``epoch``
in a shared run; then comes ``prefix`` (a ``/`` appended when it is not empty and lacks one, as in
Deep500's timer), the key (``str(key)``: ``TimeType.BATCH`` is ``batch``), the clock and the
samples the value is computed over, and the field:

``maeltrace/<prefix><key>[/gpu][/first_call]/<samples>/<field>``

================  ================================================================================
segment           meaning
================  ================================================================================
``/gpu``          the row holds device-clock durations
``/first_call``   the row holds compiling calls (JAX's first calls)
``<samples>``     one of `SAMPLES`: ``steady`` (the timer's warm-up samples skipped, as
                  `maeltrace.Timer.get_time_stats` does), ``all`` (every sample, warm-up
                  included) or ``epoch`` (every sample of one training epoch, the trainers' loggers)
``<field>``       ``stats="mean"``: ``mean``; ``stats="all"``: every field of `STATS_FIELDS`,
                  ``min``, ``mean``, ``median``, ``max``, ``stdev``, ``p95`` (seconds) and
                  ``count`` (regions); and, for rows with counted work or peak memory,
                  ``items_per_s``, ``tokens_per_s``, ``mfu``, ``peak_memory_bytes`` (with
                  ``stats="all"`` also ``items`` and ``tokens``): `Row.work_values`
================  ================================================================================

So ``tmr.log_mlflow_all()`` logs ``maeltrace/batch/steady/mean`` where the warm-up leaves
samples of ``batch``, else ``maeltrace/batch/all/mean``: a value is never steady-state under one
call and all-sample under the next with the same name. The summary service (``maeltrace
collect``) logs over every sample: ``maeltrace/<key>[/gpu][/first_call]/all/<field>``, and for
runs of several processes ``.../all/rank0/mean``, ``.../all/slowest_rank`` and ``.../all/skew``,
and the work fields (``items_per_s``...) pooled and per rank (see
`maeltrace.collect._mlflow_out`). The trainers' loggers get
``maeltrace/<key>[/gpu]/epoch/{mean,count}`` (`maeltrace.integrations._epoch_logs.EpochLog`).

``names="deep500"`` (the Deep500 shims) gives the exact names of Deep500's timers instead, with
no namespace and no samples segment: ``<prefix><KEY>`` with the key's enum name (``BATCH``;
other string keys as they are), and, when the timer measured device times, the ``CPU/`` and
``GPU/`` sub-prefixes of Deep500's ``CPUGPUTimer`` (``train/CPU/BATCH``, ``train/GPU/BATCH``);
``/first_call`` and, with ``stats="all"``, ``/<field>`` follow. Their values are the
steady-state statistics where the warm-up leaves samples, else those of every sample, as the
seed logged them.

Two rows that would share a name (a key ``"a/gpu"`` next to the GPU row of key ``"a"``) keep
the first, with a `SinkWarning`. MLflow gets each name through `mlflow_metric_name`.
"""

# Over 600 lines, on purpose: it is the one sink contract (protocols, names, pending file,
# retries, bounded HTTP) that issue 12 asked to keep in one place; each section is small.

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
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from maeltrace._files import append_line, atomic_write_bytes, read_lines
from maeltrace._validate import Checker, at, loads
from maeltrace.environment import env_is_set
from maeltrace.errors import SinkError, SinkWarning
from maeltrace.keys import Key, TimeType

if TYPE_CHECKING:
    from maeltrace.report import Row, Summary
    from maeltrace.stats import TimeStats

__all__ = [
    "BOUNDED_HTTP",
    "NAMES",
    "NAMESPACE",
    "SAMPLES",
    "STATS",
    "STATS_FIELDS",
    "LogSummary",
    "PendingFile",
    "Publisher",
    "Sink",
    "SinkError",
    "SinkWarning",
    "bounded_http",
    "check_arguments",
    "metric_name",
    "metric_values",
    "mlflow_metric_name",
    "mlflow_metric_names",
    "normalize_prefix",
    "pending_entry",
    "pending_path",
    "rank_suffix_of",
    "warn_failure",
]

_log = logging.getLogger(__name__)

STATS = ("mean", "all")
"""What the sinks' ``stats`` argument accepts: the mean only, or every field of `STATS_FIELDS`."""

STATS_FIELDS = ("min", "mean", "median", "max", "stdev", "p95", "count")
"""The statistics ``stats="all"`` logs per row, each as ``<row name>/<field>``."""

NAMES = ("maeltrace", "deep500")
"""What the sinks' ``names`` argument accepts; see the module docstring."""

NAMESPACE = "maeltrace/"
"""What begins every name of ``names="maeltrace"`` (the Timer's sinks, the summary service, the
trainers' own loggers), so that maeltrace's ``epoch`` never meets a trainer's ``epoch``."""

SAMPLES = ("steady", "all", "epoch")
"""The samples segment of a ``names="maeltrace"`` name: what the value is computed over (the
warm-up skipped; every sample; every sample of one training epoch)."""

Stats = Literal["mean", "all"]
Names = Literal["maeltrace", "deep500"]


# -- the protocols -----------------------------------------------------------------------------


class Sink(Protocol):
    """Somewhere a run summary is logged, with retries and a pending file around it
    (`Publisher`); the summary service's sinks are `maeltrace.collect._mlflow_out.MlflowSink` and
    ``WandbSink``."""

    name: str

    def log(self, summary: Mapping[str, Any]) -> str:
        """Logs one run's summary; returns the id it has there.

        Raises:
            SinkError: it could not be logged.
        """
        ...


class LogSummary(Protocol):
    """The entry point of a tracker module, ``maeltrace.sinks.<tracker>:log_summary``, which the
    Timer's ``log_*_all`` load by name (`maeltrace._imports.load`)."""

    def __call__(
        self,
        summary: Summary,
        *,
        folder: Path,
        files: Callable[[], list[Path]],
        prefix: str = "",
        stats: str = "mean",
        **options: Any,
    ) -> dict[str, float]:
        """Logs ``summary``; returns the metrics by the names logged.

        Args:
            summary: what to log; its metadata gives the run id and rank.
            folder: the run's output folder (pending files, a local store).
            files: returns the artifact paths; called only when artifacts are logged.
            prefix: put before every name.
            stats: ``"mean"`` or ``"all"``.
            **options: the tracker's own options.
        """
        ...


# -- names -------------------------------------------------------------------------------------


def normalize_prefix(prefix: str) -> str:
    """``prefix`` with a ``/`` appended when it is not empty and lacks one (Deep500's rule)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    return prefix + "/" if prefix and not prefix.endswith("/") else prefix


def check_arguments(prefix: str, stats: str, names: str = "maeltrace") -> str:
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


def metric_name(
    key: Key,
    *rest: str,
    prefix: str = "",
    device: bool = False,
    compiled: bool = False,
    names: str = "maeltrace",
    qualify: bool = False,
    samples: str | None = None,
) -> str:
    """The name of one metric of one row, the module docstring's scheme (the only place that
    spells it): ``maeltrace/<prefix><key>[/gpu][/first_call]/<samples>[/<rest>...]``, or
    Deep500's ``<prefix>[CPU/|GPU/]<KEY>[/first_call][/<rest>...]``.

    Args:
        key: the row's key.
        *rest: what follows: a field (``mean``), a process and field (``rank0``, ``mean``).
        prefix: a normalized prefix (`normalize_prefix`).
        device: the row holds device-clock durations.
        compiled: the row holds compiling calls (JAX's first calls).
        names: ``"maeltrace"`` or ``"deep500"``.
        qualify: with ``"deep500"``, add Deep500's ``CPU/``/``GPU/`` (the timer measured device
            times).
        samples: with ``"maeltrace"``, one of `SAMPLES`: what the value is computed over;
            ignored with ``"deep500"``, whose names never said.

    Raises:
        ValueError: ``names="maeltrace"`` and ``samples`` is not one of `SAMPLES`.
    """
    if names == "deep500":
        base = key.name if isinstance(key, TimeType) else str(key)
        if qualify:
            base = ("GPU/" if device else "CPU/") + base
        return "/".join((prefix + base + ("/first_call" if compiled else ""), *rest))
    if samples not in SAMPLES:
        raise ValueError(f"samples must be one of {', '.join(map(repr, SAMPLES))}, not {samples!r}")
    row = NAMESPACE + prefix + str(key) + ("/gpu" if device else "")
    return "/".join((row + ("/first_call" if compiled else ""), samples, *rest))


def _row_stats(row: Row, warmup: int) -> tuple[str, TimeStats]:
    """The statistics a sink logs for ``row`` and which samples they are over (`SAMPLES`)."""
    if warmup and row.steady is not None:
        return "steady", row.steady
    return "all", row.stats


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
    # Deep500 named a row's mean by the row alone; maeltrace's names always end in the field.
    means: tuple[tuple[str, ...], ...] = ((),) if names == "deep500" else (("mean",),)
    for row in summary.rows:
        samples, row_stats = _row_stats(row, summary.warmup)
        fields = means if stats == "mean" else tuple((f,) for f in STATS_FIELDS)
        pairs = [
            (
                metric_name(
                    row.key,
                    *rest,
                    prefix=prefix,
                    device=row.device,
                    compiled=row.compiled,
                    names=names,
                    qualify=qualify,
                    samples=samples,
                ),
                float(getattr(row_stats, rest[0] if rest else "mean")),
            )
            for rest in fields
        ]
        if names == "maeltrace":
            pairs += [
                (
                    metric_name(
                        row.key,
                        field_name,
                        prefix=prefix,
                        device=row.device,
                        compiled=row.compiled,
                        samples=samples,
                    ),
                    float(value),
                )
                for field_name, value in row.work_values(
                    summary.throughput, steady=samples == "steady"
                ).items()
                if stats == "all" or field_name not in ("items", "tokens")
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


_MAX_NAME = 250  # MLflow's limit on metric names
_BAD_CHARACTERS = re.compile(r"[^/\w.\- :]")


def mlflow_metric_name(name: str) -> str:
    """``name`` as MLflow accepts it (the only MLflow name cleaner).

    Characters other than letters, digits, ``_ - . : /`` and space become ``_``; empty path
    segments are dropped and ``.``/``..`` ones become ``_``, since MLflow refuses names that
    change under path normalisation; a name over MLflow's 250 characters keeps its last
    segments (clock, field, process) and gets a hash of the whole name, so that long names stay
    apart.
    """
    segments = [s for s in _BAD_CHARACTERS.sub("_", name).split("/") if s]
    clean = "/".join("_" if s in (".", "..") else s for s in segments) or "_"
    if len(clean) <= _MAX_NAME:
        return clean
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    # The end names the clock, field and process: keep the last segments that fit in half.
    parts = clean.split("/")
    tail: list[str] = [parts.pop()[-(_MAX_NAME // 2) :]]
    while len(parts) > 1 and len("/".join([parts[-1], *tail])) <= _MAX_NAME // 2:
        tail.insert(0, parts.pop())
    head = "/".join(parts)
    room = max(1, _MAX_NAME - len("/".join(tail)) - len(digest) - 2)
    return f"{head[:room].rstrip('/ .') or '_'}_{digest}/{'/'.join(tail)}"


def mlflow_metric_names(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` under `mlflow_metric_name`'s names; a name that another already took is left
    out with a `SinkWarning`."""
    logged: dict[str, float] = {}
    for name, value in values.items():
        clean = mlflow_metric_name(name)
        if clean in logged:
            warnings.warn(
                SinkWarning(f"{name!r} is {clean!r} in MLflow, as another metric; not logged"),
                stacklevel=3,
            )
            continue
        logged[clean] = value
    return logged


# -- the pending file --------------------------------------------------------------------------


def rank_suffix_of(metadata: Mapping[str, Any]) -> str:
    """``.rank<r>`` for file names from a summary's metadata (``rank``, as
    `maeltrace._runinfo.rank_info` gave it), by the rule of `maeltrace._runinfo.rank_suffix`:
    a launcher's rank always names the files, a framework's only in a group of several."""
    info = metadata.get("rank")
    if not isinstance(info, Mapping) or not isinstance(info.get("rank"), int):
        return ""
    source = info.get("source")
    size = info.get("world_size")
    if source == "single" or (source != "environment" and not (isinstance(size, int) and size > 1)):
        return ""
    return f".rank{info['rank']}"


def pending_path(folder: Path, sink: str, suffix: str = "") -> Path:
    """Where a sink keeps what it could not deliver: ``<folder>/pending-<sink><suffix>.jsonl``
    (``pending-mlflow.jsonl``, ``pending-wandb.rank1.jsonl``)."""
    return Path(folder) / f"pending-{sink}{suffix}.jsonl"


def pending_entry(sink: str, run_id: str, error: str | None, **fields: Any) -> dict[str, Any]:
    """One line of a pending file::

        {"sink", "run_id", "time_unix_s", "error", ...fields}

    The Timer's sinks add ``metrics`` (name -> value) and where they were going; the summary
    service adds ``summary`` (the run summary to send again).
    """
    return {"sink": sink, "run_id": run_id, "time_unix_s": time.time(), "error": error, **fields}


class PendingFile:
    """What a sink could not deliver yet: one JSON object a line, each with a ``run_id``.

    Lines are appended and read by `maeltrace._files.append_line` and `maeltrace._files.read_lines`,
    so threads and processes may share the file, a full disk leaves no torn line, and a torn
    line from a crash costs only itself (skipped with one warning).

    Args:
        path: the file (`pending_path`); its folder is made on the first write.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def add(self, entry: Mapping[str, Any]) -> None:
        """Appends an entry (`pending_entry`); a value JSON cannot encode is kept as its text.

        Raises:
            OSError: the file cannot be written (disk full, say); it is left as it was.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, _line(entry), mode=0o600)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order; lines that are not entries (not strict JSON as
        `maeltrace._validate.loads` reads it, NaN allowed; longer than
        `MAX_PENDING_LINE_BYTES`; or not of an entry's shape) are skipped with one warning."""
        source = str(self.path)
        try:
            return [
                obj
                for _, obj in read_lines(
                    self.path,
                    parse=lambda line: _entry_from_line(line, source),
                    max_line_bytes=MAX_PENDING_LINE_BYTES,
                )
            ]
        except FileNotFoundError:
            return []

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest entry of each run id, in order of first appearance."""
        found: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            found[entry["run_id"]] = entry
        return found

    def replace(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Rewrites the file with exactly these entries (atomically); removes it when none.

        Raises:
            OSError: the file cannot be written; it is left as it was.
        """
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, b"".join(_line(e) + b"\n" for e in entries.values()))

    def resend(
        self,
        send: Callable[[dict[str, Any]], bool],
        which: Callable[[Mapping[str, Any]], bool] = lambda entry: True,
    ) -> int:
        """Gives the entries that ``which`` selects to ``send``, in the file's order, stopping
        at the first it returns False for (the place is still down: that one and the later
        ones stay); the entries it returned True for (sent, or given up) leave the file, and
        every entry not selected stays. Entries appended meanwhile are kept. The one resend
        mechanism: `Publisher.resend` (summaries) and `maeltrace.sinks.live.LiveLog` (epochs).

        Returns:
            How many entries left the file.

        Raises:
            OSError: the file cannot be rewritten; it is left as it was (done entries in it).
        """
        before = self.entries()
        done: set[int] = set()
        for i, entry in enumerate(before):
            if not which(entry):
                continue
            if not send(entry):
                break
            done.add(i)
        if done:
            # Lines only ever get appended: those past the first read came meanwhile.
            added = self.entries()[len(before) :]
            left = [e for i, e in enumerate(before) if i not in done] + added
            self.replace({str(i): e for i, e in enumerate(left)})
        return len(done)

    def __len__(self) -> int:
        return len(self.load())


def _line(entry: Mapping[str, Any]) -> bytes:
    # default=str: a detail JSON cannot encode is kept as its text rather than lost.
    return json.dumps(entry, separators=(",", ":"), default=str).encode("utf-8")


MAX_PENDING_LINE_BYTES = 16 * 1024 * 1024
"""The longest pending entry read: a run summary of thousands of regions and ranks fits."""


def _entry_from_line(line: bytes, source: str) -> dict[str, Any]:
    """One pending entry, checked for its shape (`pending_entry`).

    Raises:
        FormatError: it is not one (a ValueError, so `read_lines` skips the line).
    """
    check = Checker(source)
    # allow_nan: `_line` writes a value that is not a number as json.dumps does by default.
    obj = check.object(loads(line, source, allow_nan=True), "entry")
    check.string(check.field(obj, "run_id", "entry"), "entry.run_id", max_length=1024)
    for name in ("sink", "error"):
        if obj.get(name) is not None:
            check.string(obj[name], at("entry", name), max_length=65536, empty=True)
    if "time_unix_s" in obj:
        check.number(obj["time_unix_s"], "entry.time_unix_s")
    for name in ("summary", "metrics"):
        if name in obj:
            check.object(obj[name], at("entry", name))
    return dict(obj)


def warn_failure(sink: str, what: str, exc: BaseException | str, kept: Path | None) -> None:
    """Issues the one `SinkWarning` of a failed sink call."""
    where = f"; the values are kept in {kept}" if kept is not None else ""
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    warnings.warn(SinkWarning(f"maeltrace: {sink}: {what}: {reason}{where}"), stacklevel=3)


# -- publishing with retries -------------------------------------------------------------------


class Publisher:
    """Logs summaries to one `Sink`: a few tries with backoff, then the pending file.

    Pending entries hold the summary (``summary``, `pending_entry`); only the latest of each
    run matters (a run's summary only grows). Used from one thread (the service's worker).

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

    def pending_summaries(self) -> dict[str, dict[str, Any]]:
        """The summaries waiting in the pending file, latest per run id."""
        if self.pending is None:
            return {}
        return {run_id: _summary_of(entry) for run_id, entry in self.pending.load().items()}

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

        Raises:
            OSError: the pending file cannot be written.
        """
        run_id = str(summary["run_id"])
        try:
            self._try(summary, self.attempts)
        except SinkError as err:
            if err.retryable and self.pending is not None:
                _log.warning(
                    "%s is down (%s); %s's summary is pending", self.sink.name, err, run_id
                )
                self.pending.add(
                    pending_entry(self.sink.name, run_id, str(err), summary=dict(summary))
                )
                self.states[run_id] = "pending"
            else:
                _log.error("%s refused the summary of %s: %s", self.sink.name, run_id, err)
                self.states[run_id] = f"failed: {err}"
            return self.states[run_id]
        self.states[run_id] = "logged"
        self.resend(skip=run_id)
        return "logged"

    def resend(self, skip: str | None = None) -> int:
        """Sends the pending summaries again (the latest of each run id), one try each,
        stopping at the first that fails as the sink is down; what is left stays pending
        (`PendingFile.resend`).

        Args:
            skip: a run id whose newer summary was just logged: its pending one is dropped.

        Returns:
            How many were sent.
        """
        if self.pending is None:
            return 0
        # The position of each run's latest entry (every entry is given to send, in order).
        latest = {str(e["run_id"]): i for i, e in enumerate(self.pending.entries())}
        if not latest:
            return 0
        sent = 0
        position = -1

        def send(entry: dict[str, Any]) -> bool:
            nonlocal sent, position
            position += 1
            run_id = str(entry["run_id"])
            if latest.get(run_id, position) > position or run_id == skip:
                return True  # an older summary of a run, or one just logged: superseded
            try:
                self._try(_summary_of(entry), 1)
            except SinkError as err:
                if err.retryable:
                    return False  # still down: keep this one and the rest for the next round
                _log.error("%s refused the pending summary of %s: %s", self.sink.name, run_id, err)
                self.states[run_id] = f"failed: {err}"
            else:
                self.states[run_id] = "logged"
                sent += 1
            return True

        self.pending.resend(send)
        if sent:
            _log.info("%s: sent %d pending summaries", self.sink.name, sent)
        return sent

    def has_pending(self) -> bool:
        """Whether summaries wait in the pending file."""
        return self.pending is not None and self.pending.path.exists()


def _summary_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    # An entry holds its summary; a line of the service's older files is the summary itself.
    summary = entry.get("summary")
    return dict(summary) if isinstance(summary, Mapping) else dict(entry)


# -- bounded MLflow HTTP -----------------------------------------------------------------------

BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
"""MLflow's HTTP settings while a sink talks to a server, where the user set none: one retry,
instead of the default seven with exponential backoff (minutes against a closed port).
``MLFLOW_HTTP_REQUEST_TIMEOUT`` is set to the caller's timeout the same way (`bounded_http`)."""

# MLflow draws a progress bar on stderr for every artifact transfer unless told not to.
_NO_PROGRESS_BAR = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# MLflow's HTTP settings are environment variables read at each request; the calls that bound
# them share one lock and restore the user's environment when the last one ends.
_ENV_LOCK = threading.Lock()
_env_users = 0
_env_set: list[str] = []


@contextlib.contextmanager
def bounded_http(timeout_s: float) -> Iterator[None]:
    """Bounds MLflow's HTTP client for the duration (the one retry policy of every sink):
    `BOUNDED_HTTP`'s one retry and a request timeout of ``timeout_s`` (at least 1 s), and no
    progress bar on stderr for artifact transfers (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``),
    each where the user set none; calls may nest and overlap, and the first one's settings
    hold until the last one ends."""
    global _env_users
    with _ENV_LOCK:
        if _env_users == 0:
            wanted = {
                **BOUNDED_HTTP,
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
                **_NO_PROGRESS_BAR,
            }
            for name, value in wanted.items():
                if not env_is_set(name):
                    os.environ[name] = value
                    _env_set.append(name)
        _env_users += 1
    try:
        yield
    finally:
        with _ENV_LOCK:
            _env_users -= 1
            if _env_users == 0:
                for name in _env_set:
                    os.environ.pop(name, None)
                _env_set.clear()

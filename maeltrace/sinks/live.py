"""Each epoch's statistics to MLflow and W&B while training runs, from a background thread."""

from __future__ import annotations

import contextlib
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from maeltrace._imports import require
from maeltrace.keys import Key
from maeltrace.records import FLAG_COMPILED, NO_DEVICE_TIME, STATUS_OK, Records
from maeltrace.sinks.base import (
    PendingFile,
    metric_name,
    pending_entry,
    pending_path,
    warn_failure,
)

__all__ = [
    "BACKENDS",
    "DRAIN_S",
    "QUEUE_EPOCHS",
    "LiveLog",
    "epoch_values",
    "epoch_work",
    "parse_backends",
]

BACKENDS = ("mlflow", "wandb")
"""The trackers a live series goes to (``Timer(live=...)``, ``MAELTRACE_LIVE``)."""

QUEUE_EPOCHS = 64
"""Epochs that may wait for the live thread; an epoch beyond them is dropped and counted."""

DRAIN_S = 10.0
"""The most `LiveLog.close` waits for the epochs still queued; the rest go to pending files."""


class Series(Protocol):
    """One tracker's end of the live series (`maeltrace.sinks.mlflow.MlflowSeries`,
    `maeltrace.sinks.wandb.WandbSeries`)."""

    name: str

    def capture(self) -> None:
        """On the training thread, at an epoch's end: remembers what only that thread knows."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Logs one epoch's values at ``step``; raises what the tracker raised."""

    def close(self) -> None:
        """Ends what it started, on the live thread."""


def parse_backends(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The tracker names of ``Timer(live=...)`` or ``MAELTRACE_LIVE``: a comma-separated string
    or names, without repeats; empty when none.

    Raises:
        ValueError: a name is not one of `BACKENDS`.
    """
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    found: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if not name:
            continue
        if name not in BACKENDS:
            raise ValueError(f"live must name {' or '.join(BACKENDS)}, not {raw!r}")
        if name not in found:
            found.append(name)
    return tuple(found)


def epoch_values(rows: Mapping[tuple[Key, bool], Sequence[float]]) -> dict[str, float]:
    """The mean and count of each row's samples (seconds), named
    ``maeltrace/<key>[/gpu]/epoch/{mean,count}`` (`maeltrace.sinks.base.metric_name`); rows
    without samples are left out. The trainers' loggers (`maeltrace.integrations._epoch_logs`)
    and the live series share it."""
    values: dict[str, float] = {}
    for (key, gpu), samples in rows.items():
        if samples:
            name = metric_name(key, device=gpu, samples="epoch")
            values[f"{name}/mean"] = statistics.fmean(samples)
            values[f"{name}/count"] = float(len(samples))
    return values


def _epoch_regions(records: Records, trace: int) -> Iterator[int]:
    """The rows of one trace's (an epoch's) completed regions, compiling calls left out, as the
    statistics leave them."""
    for i, (ordinal, status, flags) in enumerate(
        zip(records.trace, records.status, records.device_flags, strict=True)
    ):
        if ordinal == trace and status == STATUS_OK and not flags & FLAG_COMPILED:
            yield i


def epoch_work(records: Records, trace: int) -> dict[str, float]:
    """One trace's (an epoch's) throughput and peak memory per key, for the live series:
    ``maeltrace/<key>/epoch/{items,tokens}_per_s`` (counted work over the summed CPU durations
    of the regions that counted it, `maeltrace.Records.work`) and
    ``maeltrace/<key>/gpu/epoch/peak_memory_bytes``; keys without either are left out."""
    work, memory = records.work(), records.peak_memory
    if not work and not memory:
        return {}
    totals: dict[int, list[int]] = {}  # key id -> [items, tokens, ns of items, ns of tokens]
    peaks: dict[int, int] = {}
    for i in _epoch_regions(records, trace):
        seq, key_id, start, end = (
            records.seq[i],
            records.key_id[i],
            records.start_ns[i],
            records.end_ns[i],
        )
        count = work.get(seq)
        if count is not None:
            total = totals.setdefault(key_id, [0, 0, 0, 0])
            for column in (0, 1):
                if count[column]:
                    total[column] += count[column]
                    total[column + 2] += end - start
        if seq in memory:
            peaks[key_id] = max(peaks.get(key_id, 0), memory[seq])
    values: dict[str, float] = {}
    for key_id, (items, tokens, items_ns, tokens_ns) in totals.items():
        name = metric_name(records.keys[key_id], samples="epoch")
        for unit, counted, ns in (("items", items, items_ns), ("tokens", tokens, tokens_ns)):
            if counted and ns > 0:
                values[f"{name}/{unit}_per_s"] = counted / (ns / 1e9)
    for key_id, peak in peaks.items():
        name = metric_name(records.keys[key_id], device=True, samples="epoch")
        values[f"{name}/peak_memory_bytes"] = float(peak)
    return values


def epoch_rows(records: Records, trace: int) -> dict[tuple[Key, bool], list[float]]:
    """The durations (seconds) of the completed regions of one trace (an epoch, the epoch's
    own region included), by key and clock, CPU before device rows of each key; compiling
    calls and failed regions are left out, as the statistics leave them."""
    cpu: dict[int, list[float]] = {}
    gpu: dict[int, list[float]] = {}
    for i in _epoch_regions(records, trace):
        key_id, device = records.key_id[i], records.device_ns[i]
        cpu.setdefault(key_id, []).append((records.end_ns[i] - records.start_ns[i]) / 1e9)
        if device != NO_DEVICE_TIME:
            gpu.setdefault(key_id, []).append(device / 1e9)
    rows: dict[tuple[Key, bool], list[float]] = {}
    for key_id in sorted(cpu):
        rows[records.keys[key_id], False] = cpu[key_id]
        if key_id in gpu:
            rows[records.keys[key_id], True] = gpu[key_id]
    return rows


class LiveLog:
    """Sends each epoch's statistics to trackers, as a step series (step = the epoch's index),
    from one background thread.

    The Timer calls `epoch_ended` when a region of its trace key closes (on the training
    thread: it only queues the index); the live thread reads the records and logs the epoch's
    `epoch_values` to each tracker. A tracker that fails gives one `maeltrace.SinkWarning`
    (later failures are counted in `failures`), and the values go to its pending file
    (``pending-<tracker><rank>.jsonl``, entries with a ``step``), as the sinks keep theirs.
    After the tracker's next successful epoch, the live thread sends those entries again, in
    order, one try each (`maeltrace.sinks.base.PendingFile.resend`; counted in `resent`): a
    tracker that was down for some epochs gets the whole series. What is still pending at
    close stays in the file. The newest epoch, the one that finds `QUEUE_EPOCHS` waiting, is
    dropped (never kept) and counted (`dropped`), with one warning: the training thread
    never waits.

    Args:
        backends: tracker names (`parse_backends`).
        read: returns the timer's records (called on the live thread).
        folder: returns the run's output folder.
        suffix: returns the rank suffix of file names.
        run_id: the maeltrace run id (names a run the trackers start).
        timeout_s: the longest wait for one request to a tracking server.

    Raises:
        ValueError: a tracker name is not one of `BACKENDS`, or none is given.
        ImportError: a tracker's package is not installed (or fails to import); the message
            names the extra.
    """

    def __init__(
        self,
        backends: str | Iterable[str],
        *,
        read: Callable[[], Records],
        folder: Callable[[], Path],
        suffix: Callable[[], str],
        run_id: str,
        timeout_s: float = 5.0,
    ) -> None:
        names = parse_backends(backends)
        if not names:
            raise ValueError("live names no tracker")
        for name in names:
            # Imported here, where the timer is built (once, off the loop), not on the live
            # thread: an import there can meet the interpreter's exit, where the trackers'
            # own atexit registrations fail.
            require(name, name)
        self._series: list[Series] = []
        for name in names:
            if name == "mlflow":
                from maeltrace.sinks.mlflow import MlflowSeries

                self._series.append(MlflowSeries(folder, run_id, timeout_s))
            else:
                from maeltrace.sinks.wandb import WandbSeries

                self._series.append(WandbSeries(run_id))
        self.backends = names
        self._read = read
        self._folder = folder
        self._suffix = suffix
        self._run_id = run_id
        self._queue: queue.Queue[int | None] = queue.Queue(QUEUE_EPOCHS)
        self._give_up = threading.Event()
        self._warned: set[str] = set()
        self._closed = False
        self.logged = 0
        """Epochs logged to every tracker."""
        self.failures = 0
        """Failed tracker calls (each epoch's values kept in the tracker's pending file)."""
        self.dropped = 0
        """Epochs dropped because `QUEUE_EPOCHS` were waiting."""
        self.resent = 0
        """Epochs sent from the pending files after their tracker came back."""
        self._pending: set[str] = set()  # trackers with epochs of this run in a pending file
        self._thread = threading.Thread(target=self._work, name="maeltrace-live", daemon=True)
        self._thread.start()

    # -- the training thread -------------------------------------------------------------------

    def epoch_ended(self, trace: int) -> None:
        """Queues epoch ``trace`` (its trace ordinal, 0-based); never blocks or raises."""
        if self._closed:
            return
        try:
            for series in self._series:
                series.capture()
            self._queue.put_nowait(trace)
        except queue.Full:
            self.dropped += 1
            if "queue" not in self._warned:
                self._warned.add("queue")
                _warn(
                    "live",
                    f"epoch {trace} was dropped: {QUEUE_EPOCHS} epochs wait for the trackers",
                    "the trackers are slower than the epochs",
                    None,
                )
        except Exception as exc:  # live charts never stop training
            self.failures += 1
            _warn("live", f"epoch {trace} was not queued", exc, None)

    def flush(self, timeout_s: float = DRAIN_S) -> bool:
        """Waits at most ``timeout_s`` for the queued epochs; returns whether all are done."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout_s: float = DRAIN_S) -> None:
        """Waits at most ``timeout_s`` for the queued epochs, then ends the runs the trackers
        started; epochs still queued then go to the pending files unsent (written here), and
        a tracker call still hanging is left to its daemon thread. Later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        if not self.flush(timeout_s):
            # A tracker hangs: what waits goes to the pending files from here, now, rather
            # than from a daemon thread that the interpreter's exit may stop first.
            self._give_up.set()
            self._drain()
        with contextlib.suppress(queue.Full):  # empty by now, unless an epoch raced the close
            self._queue.put(None, timeout=0.5)
        # Ending the runs (W&B's finish uploads what is left) within what remains of the bound.
        self._thread.join(max(0.5, deadline - time.monotonic()))

    def _drain(self) -> None:
        while True:
            try:
                trace = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if trace is not None:
                    self._log_epoch(trace)
            except Exception as exc:  # the rest still goes to the pending files
                _warn("live", f"epoch {trace}'s statistics were not read", exc, None)
            finally:
                self._queue.task_done()

    # -- the live thread -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            trace = self._queue.get()
            try:
                if trace is None:
                    self._close_series()
                    return
                self._log_epoch(trace)
            except Exception as exc:  # the thread goes on to the next epoch
                self.failures += 1
                _warn("live", f"epoch {trace}'s statistics were not read", exc, None)
            finally:
                self._queue.task_done()

    def _log_epoch(self, trace: int) -> None:
        records = self._read()
        values = epoch_values(epoch_rows(records, trace))
        values.update(epoch_work(records, trace))
        if not values:
            return
        ok = True
        for series in self._series:
            if self._give_up.is_set():
                self._keep(series.name, trace, values, "not sent: the timer closed first", False)
                ok = False
                continue
            try:
                series.log(trace, values)
            except Exception as exc:  # a tracker never stops training
                self._keep(series.name, trace, values, f"{type(exc).__name__}: {exc}", True)
                ok = False
            else:
                if series.name in self._pending:
                    self._resend(series)
        if ok:
            self.logged += 1

    def _resend(self, series: Series) -> None:
        """Sends this run's epochs that wait in ``series``' pending file again, oldest first,
        one try each, stopping at the first failure (the rest wait for the next success)."""
        stopped = False

        def ours(entry: Mapping[str, object]) -> bool:
            return (
                entry.get("sink") == series.name
                and entry.get("run_id") == self._run_id
                and isinstance(entry.get("step"), int)
                and isinstance(entry.get("metrics"), dict)
            )

        def send(entry: dict[str, object]) -> bool:
            nonlocal stopped
            step, metrics = entry["step"], entry["metrics"]
            assert isinstance(step, int) and isinstance(metrics, dict)  # checked by ours
            try:
                series.log(step, metrics)
            except Exception:  # already counted and warned about when it was kept
                stopped = True
                return False
            return True

        try:
            pending = PendingFile(pending_path(self._folder(), series.name, self._suffix()))
            self.resent += pending.resend(send, ours)
        except OSError:  # the file stays as it was: the entries are tried again next epoch
            return
        if not stopped:
            self._pending.discard(series.name)

    def _keep(
        self, sink: str, step: int, values: Mapping[str, float], error: str, failed: bool
    ) -> None:
        if failed:
            self.failures += 1
        kept: Path | None = None
        try:
            pending = PendingFile(pending_path(self._folder(), sink, self._suffix()))
            pending.add(pending_entry(sink, self._run_id, error, metrics=dict(values), step=step))
            kept = pending.path
            self._pending.add(sink)
        except OSError as exc:
            error += f" (and the pending file could not be written: {exc})"
        if sink not in self._warned:
            self._warned.add(sink)
            _warn(
                sink,
                f"epoch {step}'s statistics were not logged live (later failures are counted)",
                error,
                kept,
            )

    def _close_series(self) -> None:
        for series in self._series:
            try:
                series.close()
            except Exception as exc:  # the values are in; only the run's state is left
                _warn(series.name, "the live run was not ended", exc, None)


def _warn(sink: str, what: str, exc: BaseException | str, kept: Path | None) -> None:
    """`warn_failure`, never raising: a warning filter that makes it an error has no caller to
    raise to on the live thread, and must not stop training on the training thread."""
    with contextlib.suppress(Exception):
        warn_failure(sink, what, exc, kept)

"""The export pipeline: closed regions become spans, go to disk, then to the endpoint.

The training thread only asks (`SpanPipeline.request`) and never waits unless it flushes or
closes. Two daemon threads do the work:

- ``maeltrace-export`` reads the regions closed since its last turn, encodes them as spans
  (`maeltrace.otel.spans.SpanBuilder.encode`), cuts them into requests of at most
  ``max_request_bytes`` and writes each to its destination on disk: with an endpoint, the run
  folder's outbox (`maeltrace.otel._outbox.Outbox`), before anything is sent; without one (the
  embedded default), the OTLP JSON lines file itself, which is then the delivered copy.
- ``maeltrace-send`` sends the outbox's requests in order, each with the exporter's bounded
  retries, and acknowledges each one the endpoint accepted. A request refused for its size is
  halved and sent again; one the endpoint refuses outright stays in the outbox for ``maeltrace
  replay`` and the next is sent; when the endpoint is down, the rest wait for the next epoch's
  turn (or `close`). A sender stuck on an endpoint that never answers never delays the
  writing of later epochs to disk.

Nothing here raises into the training thread: each fault of the file system or the endpoint
is warned about once (`maeltrace.errors.ExportWarning`, naming the path or endpoint and the
cause) and counted in `PipelineStats`; spans that cannot be written are kept in memory (within
a bound) and written at the next turn.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maeltrace._files import append_line
from maeltrace.errors import ExportWarning, warn_safely
from maeltrace.otel._batching import DEFAULT_MAX_REQUEST_BYTES, chunk
from maeltrace.otel._outbox import Outbox, OutboxEntry
from maeltrace.otel.exporters import ExportFailed, SpanExporter, send_splitting

if TYPE_CHECKING:
    from maeltrace.otel.spans import SpanBuilder
    from maeltrace.records import Records

__all__ = ["MAX_UNWRITTEN_BYTES", "PipelineStats", "SpanPipeline"]

ReadNew = Callable[[], "tuple[Records, dict[int, str], str | None]"]
"""Returns the regions closed since the last call, the failures, and the device clock's name."""

MAX_UNWRITTEN_BYTES = 256 * 1024 * 1024
"""The most encoded spans kept in memory while their file cannot be written (a full disk);
beyond it the oldest are given up, and counted."""

WAITING_NOTICE_S = 1.0
"""How long `SpanPipeline.close` waits for the endpoint before saying that it waits."""


@dataclass(slots=True)
class PipelineStats:
    """What the pipeline has done, for the close line, tests, benchmarks and the run span.

    Attributes:
        spans_exported: spans the endpoint accepted, or (embedded default) written to the
            traces file.
        spans_pending: spans written to the outbox that the endpoint has not accepted yet.
        spans_refused: spans the endpoint refused outright (not for its size); they stay in the
            outbox for ``maeltrace replay``.
        spans_unwritten: spans held in memory because their file could not be written.
        spans_lost: spans given up: neither written nor sent (memory bound, or the process
            ending while the file still could not be written).
        exports_failed: export requests that failed after the exporter's retries.
        requests_split: requests halved because the endpoint refused their size.
        write_errors: failed writes to the outbox or the traces file.
        errors: unexpected errors while building or sending (each warned about once).
    """

    spans_exported: int = 0
    spans_pending: int = 0
    spans_refused: int = 0
    spans_unwritten: int = 0
    spans_lost: int = 0
    exports_failed: int = 0
    requests_split: int = 0
    write_errors: int = 0
    errors: int = 0


class SpanPipeline:
    """Builds, stores and exports spans on daemon threads.

    Args:
        builder: turns regions into spans.
        read_new: returns the regions closed since its last call (see `ReadNew`).
        exporter: where spans go; None writes them to ``traces_path`` (the embedded default).
        traces_path: the OTLP JSON lines file of the embedded default.
        outbox: opens the outbox of an exporter, in the run folder, or in the folder given
            (the rescue folder at close); None or failing, requests wait in memory only, and a
            crash before they are sent loses them.
        endpoint: the endpoint's name for messages.
        max_request_bytes: the most bytes of one request or line.
    """

    def __init__(
        self,
        builder: SpanBuilder,
        read_new: ReadNew,
        exporter: SpanExporter | None,
        *,
        traces_path: Path | None = None,
        outbox: Callable[..., Outbox] | None = None,
        endpoint: str = "",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.builder = builder
        self._read_new = read_new
        self.after_build: Callable[[], None] | None = None
        """Called on the export thread after each build the training thread may wait for."""
        self._exporter = exporter
        self.traces_path = traces_path
        self.endpoint = endpoint or str(traces_path)
        self.rescued_to: Path | None = None
        self.max_request_bytes = max_request_bytes
        self.stats = PipelineStats()
        self._open_outbox = outbox
        self._outbox: Outbox | None = None
        self._outbox_tried = False
        self._released = False
        self._last_store = threading.Event()
        self._last_store.set()
        self._warned: set[str] = set()
        self.last_error = ""
        # Built, not yet delivered: outbox entries (with an exporter) or JSON lines (without).
        self._to_send: collections.deque[OutboxEntry] = collections.deque()
        self._unwritten: collections.deque[tuple[bytes, int]] = collections.deque()
        self._unwritten_bytes = 0
        self._jobs: collections.deque[tuple[str, threading.Event | None]] = collections.deque()
        self._jobs_ready = threading.Condition()
        # The sender makes a pass over the queue per kick (an epoch's end, flush, close); a
        # pass ends when the queue is empty or the endpoint failed.
        self._send_ready = threading.Condition()
        self._kicks = 0
        self._passes_done = 0
        self._run_attributes: dict[str, object] = {}
        # One build at a time: the export thread, or close() on the closing thread.
        self._build_lock = threading.Lock()
        self._final_built = False
        self._threads: dict[str, threading.Thread] = {}
        self._start_lock = threading.Lock()
        self._closed = False

    # -- the training thread's side --------------------------------------------------------

    @property
    def outbox_path(self) -> Path | None:
        """The outbox file, once opened."""
        return self._outbox.path if self._outbox is not None else None

    def request(self, *, wait_s: float | None = None, stored_s: float | None = None) -> bool:
        """Asks for the regions closed so far to be exported; never raises.

        Args:
            wait_s: how long to wait until they are on disk and sent (None: do not wait).
            stored_s: without ``wait_s``, how long to wait until they are on disk (the outbox
                or the traces file), so that a crash right after loses none of them. A store
                that does not finish in time (a hung disk) is not waited for again until one
                finishes: it costs the training thread this long once, not at every epoch.

        Returns:
            Whether everything was delivered (with ``wait_s``) or stored (with ``stored_s``) in
            time; True when not waiting.
        """
        if self._closed:
            return True
        deadline = None if wait_s is None else time.monotonic() + wait_s
        waits = wait_s is not None or (stored_s is not None and self._last_store.is_set())
        done = threading.Event() if waits else None
        if not self._start("export", self._build_loop):
            return False
        with self._jobs_ready:
            self._jobs.append(("build", done))
            self._jobs_ready.notify()
        if done is not None:
            self._last_store = done
        if done is None:
            return True
        if deadline is None:
            return done.wait(stored_s)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            return False
        return self._wait_sent(deadline)

    def close(
        self,
        final_perf_ns: int,
        wait_s: float,
        run_attributes: dict[str, object] | None = None,
        rescue: Callable[[], Path | None] | None = None,
    ) -> bool:
        """Builds and stores what is left and the run span (with ``run_attributes``: the run's
        exact statistics) on the calling thread, waits at most ``wait_s`` for the endpoint, then
        stops the threads. Spans that could not be written to the run folder (held in memory)
        go to the folder ``rescue`` gives, if it can give one. Never raises.

        Returns:
            Whether every span was delivered (or written, for the embedded default).
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        self._run_attributes = dict(run_attributes or {})
        self._closed = True
        try:
            if self._build_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    self._build(final_perf_ns)
                finally:
                    self._build_lock.release()
            else:
                self._warn(
                    "build",
                    "the export thread did not finish in time; the last regions are not exported",
                )
        except Exception as exc:  # never into training
            self._unexpected(exc)
        with self._jobs_ready:
            self._jobs.append(("stop", None))
            self._jobs_ready.notify()
        if self._exporter is None:
            self._write_unwritten()
            folder = rescue() if self._unwritten and rescue is not None else None
            if folder is not None and self.traces_path is not None:
                self.traces_path = self.rescued_to = folder / self.traces_path.name
                self._write_unwritten()
            if self._unwritten:
                self.stats.spans_lost += self.stats.spans_unwritten
                self.stats.spans_unwritten = 0
            return not self._unwritten
        delivered = self._wait_sent(deadline, notice=True)
        if not delivered and rescue is not None:
            self._rescue(rescue)
        with self._send_ready:
            # A sender still stuck on the endpoint may deliver later, but can no longer mark it:
            # the outbox is released for `maeltrace replay`, which would send that part again.
            self._released = True
            if self._outbox is not None:
                with contextlib.suppress(OSError):
                    self._outbox.close()
        if delivered:
            with contextlib.suppress(Exception):
                self._exporter.shutdown()
        return delivered

    def _wait_sent(self, deadline: float, *, notice: bool = False) -> bool:
        """Starts a send pass over the stored requests and waits until everything was sent, or
        that pass ended with the endpoint failing, or ``deadline``. With ``notice``, says on
        standard error that it waits once that takes longer than `WAITING_NOTICE_S`."""
        if self._exporter is None:
            return not self._unwritten
        if not self._to_send:
            return True
        if not self._start("send", self._send_loop):
            return False
        began = time.monotonic()
        noticed = not notice
        with self._send_ready:
            target = self._kick()
            while self._to_send and self._passes_done < target:
                now = time.monotonic()
                if now >= deadline:
                    return False
                step = deadline - now
                if not noticed:
                    step = min(step, max(0.001, began + WAITING_NOTICE_S - now))
                self._send_ready.wait(step)
                if not noticed and time.monotonic() >= began + WAITING_NOTICE_S and self._to_send:
                    noticed = True
                    where = self.outbox_path or "memory (the run folder cannot be written)"
                    print(
                        f"maeltrace: waiting up to {max(0.0, deadline - time.monotonic()):.1f} s "
                        f"for {self.endpoint} to take {self._spans_to_send()} spans; until it "
                        f"does they are in {where}",
                        file=sys.stderr,
                    )
        return not self._to_send

    def _kick(self) -> int:
        """Asks the sender for a pass (with ``_send_ready`` held); returns the pass's number."""
        self._kicks += 1
        self._send_ready.notify_all()
        return self._kicks

    def _rescue(self, rescue: Callable[[], Path | None]) -> None:
        """Writes the requests that are in memory only (the outbox could not be written) to an
        outbox in the rescue folder, for `maeltrace replay`."""
        with self._send_ready:
            memory_only = [e for e in self._to_send if e.offset < 0]
        folder = rescue() if memory_only and self._open_outbox is not None else None
        if folder is None or self._open_outbox is None:
            return
        try:
            with self._open_outbox(folder) as outbox:
                for entry in memory_only:
                    outbox.append(entry.body, entry.spans)
        except OSError as exc:
            self._warn("rescue", f"cannot write the rescue outbox in {folder}: {exc}")
            return
        self.rescued_to = outbox.path

    def _spans_to_send(self) -> int:
        return sum(e.spans for e in list(self._to_send))

    def _start(self, name: str, target: Callable[[], None]) -> bool:
        """Starts a daemon thread if it is not running; False when that is impossible (at
        interpreter exit, or out of threads)."""
        with self._start_lock:
            thread = self._threads.get(name)
            if thread is not None and thread.is_alive():
                return True
            try:
                thread = threading.Thread(target=target, name=f"maeltrace-{name}", daemon=True)
                thread.start()
            except RuntimeError as exc:
                self._warn(f"thread-{name}", f"cannot start the {name} thread: {exc}")
                return False
            self._threads[name] = thread
            return True

    # -- the export thread -----------------------------------------------------------------

    def _build_loop(self) -> None:
        while True:
            with self._jobs_ready:
                while not self._jobs:
                    self._jobs_ready.wait()
                kind, done = self._jobs.popleft()
            try:
                if kind == "stop":
                    return
                with self._build_lock:
                    self._build(None)
            except Exception as exc:  # never into training; counted and warned once
                self._unexpected(exc)
            finally:
                if done is not None:
                    done.set()
            if self.after_build is not None and not self._jobs:
                # Work that may follow the store (the region-duration histogram), once the
                # training thread no longer waits for it, and no later build waits either.
                try:
                    self.after_build()
                except Exception as exc:  # never into training; counted and warned once
                    self._unexpected(exc)

    def _build(self, final_perf_ns: int | None) -> None:
        """Encodes the regions closed since the last build (and the run span, once) and stores
        them: in the outbox for the sender, or in the traces file."""
        as_json = self._exporter is None
        records, failures, clock = self._read_new()
        spans = self.builder.encode(records, failures, clock, json=as_json)
        if final_perf_ns is not None and not self._final_built:
            self._final_built = True
            spans.append(
                self.builder.encode_run_span(final_perf_ns, self._run_attributes, json=as_json)
            )
        if not spans:
            return
        wrap = self.builder.json_line if as_json else self.builder.request_bytes
        overhead = len(wrap([]))
        for run in chunk([len(s) for s in spans], overhead, self.max_request_bytes):
            body = wrap(spans[run.start : run.stop])
            if as_json:
                self._write_line(body, len(run))
            else:
                self._store(body, len(run))
        if not as_json and self._start("send", self._send_loop):
            with self._send_ready:
                self._kick()

    # -- the embedded default: the traces file ---------------------------------------------

    def _write_line(self, line: bytes, spans: int) -> None:
        self._unwritten.append((line, spans))
        self._unwritten_bytes += len(line)
        self.stats.spans_unwritten += spans
        self._write_unwritten()
        while self._unwritten_bytes > MAX_UNWRITTEN_BYTES and len(self._unwritten) > 1:
            old, count = self._unwritten.popleft()
            self._unwritten_bytes -= len(old)
            self.stats.spans_unwritten -= count
            self.stats.spans_lost += count

    def _write_unwritten(self) -> None:
        """Writes the lines waiting in memory, in order, until one fails."""
        while self._unwritten:
            line, spans = self._unwritten[0]
            if self.traces_path is None:
                return
            try:
                self.traces_path.parent.mkdir(parents=True, exist_ok=True)
                append_line(self.traces_path, line.rstrip(b"\n"))
            except OSError as exc:
                self.stats.write_errors += 1
                self._warn(
                    "traces",
                    f"cannot write {self.traces_path}: {exc}; spans wait in memory and are "
                    "written once it can be",
                )
                return
            self._unwritten.popleft()
            self._unwritten_bytes -= len(line)
            self.stats.spans_unwritten -= spans
            self.stats.spans_exported += spans

    # -- with an exporter: the outbox and the sender ---------------------------------------

    def _store(self, body: bytes, spans: int) -> None:
        """Writes a request to the outbox (or keeps it in memory only, when the outbox cannot
        be written) and queues it for the sender."""
        outbox = self._ensure_outbox()
        entry = OutboxEntry(-1, body, spans)
        if outbox is not None:
            try:
                entry = outbox.append(body, spans)
            except OSError as exc:
                self.stats.write_errors += 1
                self._warn(
                    "outbox",
                    f"cannot write the outbox {outbox.path}: {exc}; spans are sent from memory, "
                    "and a crash before they are sent loses them",
                )
        with self._send_ready:
            self._to_send.append(entry)
            self.stats.spans_pending += spans

    def _ensure_outbox(self) -> Outbox | None:
        if self._outbox is None and not self._outbox_tried and self._open_outbox is not None:
            self._outbox_tried = True
            try:
                self._outbox = self._open_outbox()
            except OSError as exc:
                self.stats.write_errors += 1
                self._warn(
                    "outbox",
                    f"cannot open the outbox: {exc}; spans are sent from memory, and a crash "
                    "before they are sent loses them",
                )
        return self._outbox

    def _send_loop(self) -> None:
        while True:
            with self._send_ready:
                while self._kicks == self._passes_done or not self._to_send:
                    if not self._to_send:
                        self._passes_done = self._kicks
                        self._send_ready.notify_all()
                        if self._closed:
                            return
                    self._send_ready.wait()
                target = self._kicks
            try:
                self._send_pending()
            except Exception as exc:  # never into training; counted and warned once
                self._unexpected(exc)
            finally:
                with self._send_ready:
                    self._passes_done = target
                    self._send_ready.notify_all()

    def _send_pending(self) -> None:
        """Sends the queued requests in order until the endpoint fails in a way a later try may
        cure."""
        assert self._exporter is not None
        while self._to_send:
            entry = self._to_send[0]
            try:
                self.stats.requests_split += send_splitting(self._exporter, entry.body)
            except ExportFailed as exc:
                self.stats.exports_failed += 1
                self.last_error = str(exc)
                where = self.outbox_path or "memory"
                if exc.retryable:
                    self._warn(
                        "send",
                        f"{exc}; spans wait in {where} and are sent again at the next epoch's "
                        "end or at close",
                    )
                    return
                self._warn(
                    "refused",
                    f"{exc}; the refused spans stay in {where} for `maeltrace replay`",
                )
                with self._send_ready:
                    self._to_send.popleft()
                    self.stats.spans_pending -= entry.spans
                    self.stats.spans_refused += entry.spans
                continue
            with self._send_ready:
                self._to_send.popleft()
                self.stats.spans_pending -= entry.spans
                self.stats.spans_exported += entry.spans
            if self._outbox is not None and entry.offset >= 0:
                try:
                    with self._send_ready:
                        if not self._released:
                            self._outbox.acknowledge(entry)
                except OSError as exc:
                    self.stats.write_errors += 1
                    self._warn(
                        "ack",
                        f"cannot mark spans delivered in {self._outbox.path}: {exc}; a replay "
                        "would send them again",
                    )

    # -- faults ----------------------------------------------------------------------------

    def warned_about_sending(self) -> bool:
        """Whether spans could not be sent and the user was told (the endpoint is down or
        refuses): maeltrace's own metrics to the same endpoint then only count their
        failures."""
        return bool(self._warned & {"send", "refused"})

    def _warn(self, cause: str, message: str) -> None:
        """One `ExportWarning` per cause; later ones are only counted."""
        if cause in self._warned:
            return
        self._warned.add(cause)
        warn_safely(f"maeltrace: {message}", ExportWarning)

    def _unexpected(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._warn("error", f"building or sending spans failed: {self.last_error}")

    def summary_line(self) -> str | None:
        """One line saying what was not written or sent and where it is, or None when
        everything went out."""
        s = self.stats
        parts = []
        if s.spans_pending:
            where = self.rescued_to or self.outbox_path
            place = (
                f"they are in {where}; send them with `maeltrace replay {where}`"
                if where is not None
                else "they were in memory only (no folder could be written) and are lost"
            )
            cause = f" ({self.last_error})" if self.last_error else " (no answer in time)"
            parts.append(
                f"{s.spans_pending} spans were not delivered to {self.endpoint}{cause}; {place}"
            )
        if s.spans_refused:
            parts.append(
                f"{s.spans_refused} spans were refused by {self.endpoint} and kept in "
                f"{self.outbox_path}"
            )
        if self._exporter is None and self.rescued_to is not None:
            parts.append(
                f"the spans could not be written to the run folder; they are in {self.rescued_to}"
            )
        if s.spans_lost:
            parts.append(
                f"{s.spans_lost} spans could not be written to {self.endpoint} and are lost"
            )
        return "maeltrace: " + "; ".join(parts) if parts else None

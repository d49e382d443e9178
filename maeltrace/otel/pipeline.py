"""The export pipeline: new regions become spans and leave on a background thread.

The training thread only asks (`SpanPipeline.request`); a daemon thread reads the timer's new
regions, builds their spans and exports them. An export that fails after the exporter's own
bounded retries goes to the spill file, in OTLP JSON lines, for ``maeltrace replay``. Nothing
here raises into the training thread, and nothing waits longer than the timeouts given.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from maeltrace.otel.export import ExportFailed, JsonLinesExporter, SpanExporter

if TYPE_CHECKING:
    from maeltrace.otel.spans import SpanBuilder
    from maeltrace.records import Records

__all__ = ["PipelineStats", "SpanPipeline"]

_log = logging.getLogger(__name__)

ReadNew = Callable[[], "tuple[Records, dict[int, str], str | None]"]
"""Returns the regions closed since the last call, the failures, and the device clock's name."""


@dataclass(slots=True)
class PipelineStats:
    """What the pipeline has done, for tests, benchmarks and the run span.

    Attributes:
        spans_exported: spans the exporter accepted.
        spans_spilled: spans written to the spill file instead.
        exports_failed: exports that failed (after retries).
        errors: unexpected errors while building spans (each logged once).
    """

    spans_exported: int = 0
    spans_spilled: int = 0
    exports_failed: int = 0
    errors: int = 0


class SpanPipeline:
    """Builds and exports spans on a daemon thread.

    Args:
        builder: turns regions into spans.
        read_new: returns the regions closed since its last call (see `ReadNew`).
        exporter: where spans go; None writes only to ``spill_path``'s sibling file
            ``traces_path`` (the embedded default).
        traces_path: the OTLP JSON lines file of the embedded default, when ``exporter`` is None.
        spill_path: where spans go that the exporter could not take.
    """

    def __init__(
        self,
        builder: SpanBuilder,
        read_new: ReadNew,
        exporter: SpanExporter | None,
        traces_path: Path | None,
        spill_path: Path,
    ) -> None:
        if exporter is None and traces_path is None:
            raise ValueError("give an exporter or a traces file")
        self.builder = builder
        self._read_new = read_new
        self._exporter: SpanExporter = exporter or JsonLinesExporter(traces_path)  # type: ignore[arg-type]  # checked above
        self._spill = JsonLinesExporter(spill_path)
        self.spill_path = spill_path
        self.stats = PipelineStats()
        self._queue: queue.Queue[tuple[str, threading.Event | None, int]] = queue.Queue()
        self._run_attributes: dict[str, object] = {}
        # One build at a time (the export thread, or close() taking over from a stuck one).
        self._build_lock = threading.Lock()
        self._final_built = False
        self._in_flight: ExportTraceServiceRequest | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="maeltrace-export", daemon=True
                )
                self._thread.start()

    def request(self, *, wait_s: float | None = None, final_perf_ns: int | None = None) -> bool:
        """Asks for the new regions to be exported.

        Args:
            wait_s: how long to wait for the export (None: do not wait).
            final_perf_ns: also export the run span, ending then (at close).

        Returns:
            Whether the export finished in time (always True when not waiting).
        """
        if self._closed:
            return True
        done = threading.Event() if wait_s is not None else None
        self._ensure_thread()
        self._queue.put(("final" if final_perf_ns is not None else "new", done, final_perf_ns or 0))
        return done.wait(wait_s) if done is not None else True

    def close(
        self, final_perf_ns: int, wait_s: float, run_attributes: dict[str, object] | None = None
    ) -> bool:
        """Exports what is left and the run span (with ``run_attributes``: the run's exact
        statistics), then stops the thread."""
        self._run_attributes = dict(run_attributes or {})
        finished = self.request(wait_s=wait_s, final_perf_ns=final_perf_ns)
        self._closed = True
        self._queue.put(("stop", None, 0))
        if not finished:
            self._spill_rest(final_perf_ns)
        return finished

    def _spill_rest(self, final_perf_ns: int) -> None:
        """The exporter is stuck (an endpoint that takes connections and never answers): what it
        holds, and what was not built yet, go to the spill file now rather than be lost with the
        daemon thread at exit. Should the export still succeed later, replay sends those spans
        twice, under the same ids."""
        in_flight = self._in_flight
        if in_flight is not None:
            self._spill.export(in_flight)
        if self._build_lock.acquire(timeout=5.0):
            try:
                built = self._build(final_perf_ns)
            finally:
                self._build_lock.release()
            if built is not None:
                self._spill.export(built[0])
                self.stats.spans_spilled += built[1]

    def _run(self) -> None:
        while True:
            kind, done, final_ns = self._queue.get()
            try:
                if kind == "stop":
                    self._exporter.shutdown()
                    return
                self._export_new(final_ns if kind == "final" else None)
            except Exception:  # never into training; counted and logged once
                self.stats.errors += 1
                if self.stats.errors == 1:
                    _log.exception("maeltrace: building or exporting spans failed")
            finally:
                if done is not None:
                    done.set()

    def _export_new(self, final_perf_ns: int | None) -> None:
        with self._build_lock:
            built = self._build(final_perf_ns)
        if built is not None:
            self._send(*built)

    def _build(self, final_perf_ns: int | None) -> tuple[ExportTraceServiceRequest, int] | None:
        """The spans of the regions closed since the last build (and the run span, once)."""
        records, failures, clock = self._read_new()
        request = ExportTraceServiceRequest()
        message = request.resource_spans.add()
        message.CopyFrom(self.builder.new_message())
        count = self.builder.add(message, records, failures, clock)
        if final_perf_ns is not None and not self._final_built:
            self._final_built = True
            self.builder.add_run_span(message, final_perf_ns, self._run_attributes)
            count += 1
        return (request, count) if count else None

    def _send(self, request: ExportTraceServiceRequest, count: int) -> None:
        self._in_flight = request
        try:
            self._exporter.export(request)
        except ExportFailed as exc:
            self.stats.exports_failed += 1
            if self.stats.exports_failed == 1:
                _log.warning(
                    "maeltrace: export failed (%s); spans go to %s for `maeltrace replay`",
                    exc,
                    self.spill_path,
                )
            self._spill.export(request)
            self.stats.spans_spilled += count
        else:
            self.stats.spans_exported += count
        finally:
            self._in_flight = None

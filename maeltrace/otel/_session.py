"""One timer's span export: its pipeline, built at first use, fed the regions closed since."""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from maeltrace._clock import ClockAnchor
from maeltrace.environment import MAELTRACE_MAX_REQUEST_BYTES, env_int
from maeltrace.errors import ExportWarning, warn_safely
from maeltrace.otel import semconv
from maeltrace.records import FIELDS, Records

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from maeltrace.otel._outbox import Outbox
    from maeltrace.otel._pipeline import PipelineStats, SpanPipeline
    from maeltrace.otel.config import ExportConfig
    from maeltrace.otel.exporters import SpanExporter
    from maeltrace.otel.metrics import RegionMetrics
    from maeltrace.otel.spans import TraceBudget

__all__ = [
    "MAX_UNMEASURED",
    "ExportSession",
    "LiveState",
    "check_exporter",
    "check_max_request_bytes",
]

MAX_UNMEASURED = 250_000
"""The most regions waiting for the histogram's paced thread (about 100 bytes each); beyond, the
oldest epochs' are left out of the metric (`ExportSession.metrics_dropped`)."""

Logs = Sequence[tuple[tuple[int | None, int | None, str], bytes]]
"""The recorder's per-thread logs: (thread ident, native id, name) and the packed regions."""


class LiveState(NamedTuple):
    """What the recorder's owner knows beside its logs, read after them (a key is registered
    before any of its regions opens, so every region of the logs finds its key)."""

    keys: tuple[Any, ...]
    device_times: Mapping[int, tuple[int, int, int]]
    device_offset_ns: int
    failures: dict[int, str]
    device_clock: str | None
    trace_key_id: int | None
    counts: Mapping[int, tuple[int, int]] = {}
    peak_memory: Mapping[int, int] = {}


def check_exporter(exporter: object) -> SpanExporter | None:
    """``exporter`` as a `maeltrace.otel.exporters.SpanExporter`, or None.

    Raises:
        TypeError: it is a class, or has no callable ``export`` and ``shutdown``.
    """
    if exporter is None:
        return None
    methods = all(callable(getattr(exporter, m, None)) for m in ("export", "shutdown"))
    if isinstance(exporter, type) or not methods:
        what = (
            f"the class {exporter.__name__}"
            if isinstance(exporter, type)
            else type(exporter).__name__
        )
        raise TypeError(
            "exporter must implement maeltrace.otel.exporters.SpanExporter (export(request) "
            f"and shutdown()), not {what}"
        )
    return exporter  # type: ignore[return-value]  # checked structurally just above


def check_max_request_bytes(value: int | None) -> int:
    """``value``, else ``MAELTRACE_MAX_REQUEST_BYTES``, else the gRPC limit.

    Raises:
        ValueError: it is not a whole number of at least
            `maeltrace.otel._batching.MIN_MAX_REQUEST_BYTES`.
    """
    from maeltrace.otel._batching import DEFAULT_MAX_REQUEST_BYTES, MIN_MAX_REQUEST_BYTES

    if value is None:
        return env_int(
            MAELTRACE_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES, minimum=MIN_MAX_REQUEST_BYTES
        )
    source = "max_request_bytes"
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_MAX_REQUEST_BYTES:
        raise ValueError(
            f"{source} must be an int of at least {MIN_MAX_REQUEST_BYTES}, not {value!r}"
        )
    return value


class ExportSession:
    """Builds a recorder's export pipeline at first use and feeds it the regions closed since
    its last turn; never raises for the file system or the endpoint.

    Args:
        run_id: the run's id.
        owner: a number telling this recorder from others of the process (in span ids).
        anchor: the clock anchor of the recorder.
        config: the OTLP configuration read from the arguments and environment; None writes
            spans to the traces file (the embedded default).
        exporter: sends instead of an exporter built from ``config``; the outbox, batching,
            splitting and retries of the pipeline stay.
        trace_budget: spans per trace.
        max_request_bytes: the most bytes of one request, outbox record or traces line.
        folder: the run folder's path (not created), asked when the pipeline is built.
        suffix: the rank's file suffix, asked when the pipeline is built.
        snapshot: the recorder's logs from the given offsets on (one per thread log).
        live_state: what the recorder's owner knows beside the logs.
        tracer_provider: the user's OpenTelemetry TracerProvider (the SDK span path,
            `maeltrace.otel.sdk`); default the global one where the user set one. An
            ``exporter`` wins over both.
        meter_provider: the user's MeterProvider for the region-duration histogram
            (`maeltrace.otel.metrics`); default the global one where the user set one, else
            maeltrace's own OTLP metrics export where ``config`` names an endpoint.
    """

    def __init__(
        self,
        *,
        run_id: str,
        owner: int,
        anchor: ClockAnchor,
        config: ExportConfig | None,
        exporter: SpanExporter | None,
        trace_budget: TraceBudget | None,
        max_request_bytes: int,
        folder: Callable[[], Path],
        suffix: Callable[[], str],
        snapshot: Callable[[list[int]], Logs],
        live_state: Callable[[], LiveState],
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._run_id = run_id
        self._owner = owner
        self._anchor = anchor
        self._config = config
        self._exporter = exporter
        self._budget = trace_budget
        self._max_request_bytes = max_request_bytes
        self._folder = folder
        self._suffix = suffix
        self._snapshot = snapshot
        self._live_state = live_state
        self._failed = False
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self.metrics: RegionMetrics | None = None
        """The region-duration histogram's recorder, once the export thread built it (or
        None)."""
        self._metrics_tried = False
        self._unmeasured: collections.deque[Records] = collections.deque()
        self._metrics_hurry = threading.Event()  # set: the histogram records without resting
        self.metrics_dropped = 0
        """Regions left out of the histogram because it fell `MAX_UNMEASURED` behind."""
        self._metrics_lock = threading.Lock()
        self._metrics_thread: threading.Thread | None = None
        self._metrics_wake = threading.Event()
        self._metrics_stop = False
        self._resource_attributes: Mapping[str, object] = {}
        self._pipeline: SpanPipeline | None = None
        self.offsets: list[int] = []
        """Per thread log, how many regions the pipeline has read."""
        self.user_parents: dict[int, tuple[bytes, bytes]] = {}
        """The user's OpenTelemetry span (trace id, span id) of each root region that had one."""

    def pipeline(self) -> SpanPipeline | None:
        """The pipeline, built at first use; None (with one warning) when it cannot be."""
        if self._pipeline is None and not self._failed:
            try:
                self._pipeline = self._new_pipeline()
                self._pipeline.after_build = self._wake_metrics
            except Exception as exc:  # never into training
                self._failed = True
                warn_safely(
                    f"maeltrace: cannot set up span export: {type(exc).__name__}: {exc}; "
                    "regions are still recorded and the statistics stay readable",
                    ExportWarning,
                    stacklevel=4,
                )
        return self._pipeline

    def _new_pipeline(self) -> SpanPipeline:
        from maeltrace.otel._outbox import Outbox
        from maeltrace.otel._pipeline import SpanPipeline
        from maeltrace.otel._resource import resource
        from maeltrace.otel.config import HTTP_JSON, ExportConfigError
        from maeltrace.otel.exporters import make_exporter
        from maeltrace.otel.spans import SpanBuilder

        resource_attributes = resource(self._run_id)
        builder = SpanBuilder(
            run_id=self._run_id,
            process_id=f"{socket.gethostname()}/{os.getpid()}/{self._owner:x}",
            anchor=self._anchor,
            resource_attributes=resource_attributes,
            trace_key_id=self._live_state().trace_key_id,
            budget=self._budget,
            user_parents=self.user_parents,
        )
        folder = self._folder()
        suffix = self._suffix()
        config = self._config
        exporter = self._exporter
        endpoint = type(exporter).__name__
        self._resource_attributes = resource_attributes
        if exporter is None:
            exporter, endpoint = self._sdk_exporter(resource_attributes, builder.run_span_id)
        # OTLP/JSON bodies are made from the protobuf requests and are up to three times larger.
        factor = 1
        if exporter is None and config is not None:
            try:
                exporter = make_exporter(config)
            except ExportConfigError as exc:
                warn_safely(
                    f"maeltrace: cannot export to {config.endpoint}: {exc}; spans go to the "
                    "traces file of the run folder instead",
                    ExportWarning,
                    stacklevel=5,
                )
            endpoint = config.endpoint
            factor = 3 if config.protocol == HTTP_JSON else 1
        if exporter is None:
            return SpanPipeline(
                builder,
                self.read_new,
                None,
                traces_path=folder / f"traces{suffix}.otlp.jsonl",
                max_request_bytes=self._max_request_bytes,
            )

        def open_outbox(where: Path = folder) -> Outbox:
            where.mkdir(parents=True, exist_ok=True)
            return Outbox.open_free(where, suffix)

        return SpanPipeline(
            builder,
            self.read_new,
            exporter,
            outbox=open_outbox,
            endpoint=endpoint,
            max_request_bytes=self._max_request_bytes // factor,
        )

    def _sdk_exporter(
        self, resource_attributes: Mapping[str, object], run_span_id: bytes
    ) -> tuple[SpanExporter | None, str]:
        """The SDK span path's exporter, where the user has a TracerProvider."""
        from maeltrace.otel.sdk import SdkSpanExporter, user_tracer_provider

        provider = user_tracer_provider(self._tracer_provider)
        if provider is None:
            return None, ""
        roots = {
            k: resource_attributes[k]
            for k in (semconv.MAELTRACE_RUN_ID, semconv.MAELTRACE_RANK)
            if k in resource_attributes
        }
        run_span = (run_span_id, self._anchor.wall_time_unix_nano)
        exporter = SdkSpanExporter(provider, roots, run_span=run_span)
        return exporter, f"your TracerProvider ({type(provider).__name__})"

    def _start_metrics(self, resource_attributes: Mapping[str, object]) -> None:
        """Builds the region-duration histogram's recorder, if any (one warning if it fails)."""
        from maeltrace.otel.metrics import region_metrics

        try:
            self.metrics = region_metrics(self._meter_provider, self._config, resource_attributes)
            pipeline = self._pipeline
            if self.metrics is not None and self.metrics.owned and pipeline is not None:
                self.metrics.endpoint_warned = pipeline.warned_about_sending
        except Exception as exc:  # never into training
            warn_safely(
                f"maeltrace: cannot set up the {semconv.REGION_DURATION} metric: "
                f"{type(exc).__name__}: {exc}; spans and statistics are not affected",
                ExportWarning,
                stacklevel=6,
            )

    def _wake_metrics(self) -> None:
        """Has the histogram's own thread record what the export thread has read (called by
        the export thread after a build). The histogram costs tens of µs a region in the SDK;
        on the export thread, a tight loop's next epoch would wait behind it."""
        if self._metrics_tried and self.metrics is None:
            return  # no histogram: no thread
        if self._metrics_thread is None:
            thread = threading.Thread(
                target=self._metrics_loop, name="maeltrace-metrics", daemon=True
            )
            thread.start()
            self._metrics_thread = thread  # once started: `_stop_metrics` may join it
        self._metrics_wake.set()

    def _metrics_loop(self) -> None:
        """The histogram's thread: records on each wake until `close` (or no histogram)."""
        warned = False
        while not self._metrics_stop:
            self._metrics_wake.wait()
            self._metrics_wake.clear()
            try:
                self.record_metrics(hurry=self._metrics_hurry)
            except Exception as exc:  # never into training; once
                if not warned:
                    warned = True
                    warn_safely(
                        f"maeltrace: the {semconv.REGION_DURATION} metric failed: "
                        f"{type(exc).__name__}: {exc}; spans and statistics are not affected",
                        ExportWarning,
                    )
            if self._metrics_tried and self.metrics is None:
                return

    def _stop_metrics(self, wait_s: float) -> None:
        """Stops the histogram's thread, waiting at most ``wait_s`` for it."""
        thread = self._metrics_thread
        self._metrics_stop = True
        self._metrics_wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(wait_s, 0.0))

    def record_metrics(self, hurry: threading.Event | None = None) -> None:
        """Records the histogram's points of the regions read since (on the histogram's
        thread, after the epoch's spans are stored: an epoch's end never waits for it; or on
        the thread of a `flush` or `close`, which wait for it)."""
        with self._metrics_lock:
            if not self._metrics_tried:
                # Here, not at an epoch's end: the SDK and its exporter take a second to load.
                # Marked tried only once built: until then `read_new` keeps every epoch's
                # regions for it (the export thread goes on meanwhile).
                self._start_metrics(self._resource_attributes)
                self._metrics_tried = True
                if self.metrics is None:
                    self._unmeasured.clear()
            while self._unmeasured:
                records = self._unmeasured.popleft()
                if self.metrics is not None:
                    self.metrics.record(records, hurry)

    def read_new(self) -> tuple[Records, dict[int, str], str | None]:
        """The regions closed since the last call (on the export thread), their failures and
        the device clock's name."""
        logs = self._snapshot(self.offsets)
        offsets = self.offsets
        for i, (_, data) in enumerate(logs):
            if i == len(offsets):
                offsets.append(0)
            offsets[i] += len(data) // (FIELDS * 8)
        state = self._live_state()
        if self._pipeline is not None and state.trace_key_id is not None:
            self._pipeline.builder.trace_key_id = state.trace_key_id
        # Records.merge's sort and copies, in compiled code with the GIL released where built:
        # in Python they cost the training thread about 2 us per region.
        from maeltrace.otel._encode import merge_records

        records = merge_records(
            logs,
            state.keys,
            state.device_times,
            state.device_offset_ns,
            counts=state.counts,
            peak_memory=state.peak_memory,
        )
        if self.metrics is not None or not self._metrics_tried:
            self._unmeasured.append(records)
            self._bound_unmeasured()
        return records, state.failures, state.device_clock

    def _bound_unmeasured(self) -> None:
        """Drops the oldest epochs' regions the histogram has not recorded beyond
        `MAX_UNMEASURED` (a loop of short regions outruns its paced thread): one
        `ExportWarning` and a count (`metrics_dropped`); spans and statistics keep them."""
        waiting = sum(len(r) for r in self._unmeasured)
        dropped = 0
        while waiting > MAX_UNMEASURED and len(self._unmeasured) > 1:
            try:
                oldest = self._unmeasured.popleft()
            except IndexError:  # the histogram's thread took it meanwhile
                break
            waiting -= len(oldest)
            dropped += len(oldest)
        if dropped:
            if not self.metrics_dropped:
                warn_safely(
                    f"maeltrace: the {semconv.REGION_DURATION} metric fell behind the loop: "
                    f"{dropped} regions (and later ones, counted in metrics_dropped) were left "
                    "out of it; spans and statistics keep every region",
                    ExportWarning,
                )
            self.metrics_dropped += dropped

    def on_root_open(self, seq: int) -> None:
        """Notes the user's active OpenTelemetry span, if any, as the parent of root region
        ``seq``."""
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            self.user_parents[seq] = (
                context.trace_id.to_bytes(16, "big"),
                context.span_id.to_bytes(8, "big"),
            )

    def request(self, *, wait_s: float | None = None, stored_s: float | None = None) -> None:
        """Asks for the regions closed so far to be exported (`SpanPipeline.request`)."""
        pipeline = self.pipeline()
        if pipeline is not None:
            pipeline.request(wait_s=wait_s, stored_s=stored_s)
            if wait_s is not None:  # a flush: the histogram holds every region after it
                self._metrics_hurry.set()
                try:
                    self.record_metrics()
                finally:
                    self._metrics_hurry.clear()

    def close(
        self,
        final_perf_ns: int,
        wait_s: float,
        run_attributes: Mapping[str, object],
        device: tuple[str, str] | None,
        rescue: Callable[[], Path | None],
    ) -> str | None:
        """Exports what is left and the run span (`SpanPipeline.close`).

        Args:
            final_perf_ns: the run span's end.
            wait_s: the most to wait for the endpoint.
            run_attributes: the run's exact statistics.
            device: the device clock's name and description, if one was chosen.
            rescue: gives the folder for spans the run folder could not take.

        Returns:
            The line saying what was not delivered and where it is, or None.
        """
        pipeline = self.pipeline()
        if pipeline is None:
            return None
        attributes = dict(run_attributes)
        if device is not None:
            attributes[semconv.MAELTRACE_DEVICE_CLOCK] = device[0]
            attributes[semconv.MAELTRACE_DEVICE_DESCRIPTION] = device[1]
        began = time.monotonic()
        pipeline.close(
            final_perf_ns=final_perf_ns,
            wait_s=wait_s,
            run_attributes=attributes,
            rescue=rescue,
        )
        # The histogram shares the bound: a close never waits longer than ``wait_s`` in all.
        left_s = max(0.0, wait_s - (time.monotonic() - began))
        self._metrics_hurry.set()
        self._stop_metrics(left_s)
        self.record_metrics()
        if self.metrics is not None:
            self.metrics.close(max(0.0, wait_s - (time.monotonic() - began)))
        return pipeline.summary_line()

    def forget(self) -> None:
        """Drops the pipeline without closing it (in a forked child, whose threads are gone)."""
        self._pipeline = None
        self.metrics = None
        self._metrics_thread = None  # gone with the fork, and so may the lock's holder be
        self._metrics_lock = threading.Lock()
        self._metrics_hurry = threading.Event()

    def outbox_path(self) -> Path | None:
        """The outbox file, once opened."""
        return self._pipeline.outbox_path if self._pipeline is not None else None

    def health(self, write_errors: int = 0) -> PipelineStats:
        """A copy of the pipeline's counts, with ``write_errors`` more failed writes."""
        from maeltrace.otel._pipeline import PipelineStats

        stats = PipelineStats()
        if self._pipeline is not None:
            stats = dataclasses.replace(self._pipeline.stats)
        stats.write_errors += write_errors
        return stats

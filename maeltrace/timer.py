"""The `Timer`: records regions of code on the calling thread's log, off any lock."""

# Over 600 lines, on purpose: a third of it is the docstrings of the public class (the API
# reference the README points at), and the rest is recording, reading and summarising. What the
# Timer does not do itself lives elsewhere: the recorder in _hotpath.c and _recorder.py, span
# export in otel/_session.py, the run's files in _run_files.py, sinks and gather behind load().

from __future__ import annotations

import atexit
import functools
import inspect
import math
import operator
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from time import perf_counter_ns
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from maeltrace import _signals
from maeltrace._annotations import Annotator, annotators
from maeltrace._clock import ClockAnchor
from maeltrace._imports import load
from maeltrace._metadata import run_metadata
from maeltrace._recorder import PyRecorder
from maeltrace._recording import (
    NULL_REGION,
    CountedRegion,
    Region,
    hotpath_recorder,
    noop,
    thread_info,
)
from maeltrace._run_files import RunFiles
from maeltrace._runinfo import new_run_id, rank_suffix, run_id_from_environment
from maeltrace.devices import registry as clocks
from maeltrace.devices.base import DeviceClock, DeviceClockFactory, DeviceTimes, block_any
from maeltrace.environment import (
    MAELTRACE_DEVICE,
    MAELTRACE_DISABLED,
    MAELTRACE_EXPORT,
    MAELTRACE_LIVE,
    MAELTRACE_MEMORY,
    MAELTRACE_PEAK_FLOPS,
    MAELTRACE_PURE_PYTHON,
    MAELTRACE_SIGNALS,
    env_flag,
    env_str,
)
from maeltrace.errors import RegionError
from maeltrace.keys import Key, TimeType, canonical_key
from maeltrace.otel._session import (
    ExportSession,
    LiveState,
    check_exporter,
    check_max_request_bytes,
)
from maeltrace.records import STATUS_OK, Records, RegionCounts, key_samples
from maeltrace.stats import TimeStats, compute_stats

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from maeltrace import _hotpath
    from maeltrace.distributed import GatheredStats
    from maeltrace.otel._pipeline import PipelineStats
    from maeltrace.otel.config import ExportConfig
    from maeltrace.otel.exporters import SpanExporter
    from maeltrace.otel.spans import TraceBudget
    from maeltrace.report import Summary
    from maeltrace.sinks.live import LiveLog

__all__ = ["Region", "Timer"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


STORE_WAIT_S = 1.0
"""The most an epoch's end waits for its spans to be on disk (a millisecond or two for
thousands of spans; a hung disk costs this once, then is not waited for until it recovers)."""

LIVE_DRAIN_S = 10.0
"""The most `Timer.close` and the ``log_*_all`` calls wait for the live series' queued epochs."""

_TIMERS: weakref.WeakSet[Timer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tmr in list(_TIMERS):
        tmr._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_timers() -> list[Timer]:
    """The timers whose files or live series are still to be written: those that export or
    send live series, are open and recorded something."""
    return [
        tmr
        for tmr in list(_TIMERS)
        if (tmr.export or tmr._live is not None) and not tmr._closed and tmr.keys()
    ]


@atexit.register
def _close_at_exit() -> None:
    """Exports and writes the files of every open timer that recorded something."""
    for tmr in _open_timers():
        try:
            tmr.close(timeout_s=10.0)
        except Exception as exc:  # at exit there is no one left to raise to
            print(f"maeltrace: could not close {tmr!r} at exit: {exc}", file=sys.stderr)


def _signal_timers() -> list[Timer]:
    """The timers whose files SIGTERM and SIGINT write (`maeltrace._signals`): as at exit,
    unless built with ``handle_signals=False``."""
    return [tmr for tmr in _open_timers() if tmr._handle_signals]


def _check_providers(
    tracer_provider: object, meter_provider: object
) -> tuple[TracerProvider | None, MeterProvider | None]:
    """The OpenTelemetry providers given to a Timer, checked (`maeltrace.otel.sdk`)."""
    if tracer_provider is None and meter_provider is None:
        return None, None
    from maeltrace.otel.metrics import check_meter_provider
    from maeltrace.otel.sdk import check_tracer_provider

    return check_tracer_provider(tracer_provider), check_meter_provider(meter_provider)


class Timer:
    """Times regions of code on the monotonic CPU clock.

    Each region is opened and closed under a key (a `TimeType` or any non-empty string). Regions
    of different keys nest and overlap freely; each thread has its own open regions, and the
    region that was innermost open on the thread when another opened becomes its parent. The
    hot path is two clock reads and an append to the thread's own log: no lock, no object that
    outlives the region.

    Args:
        enabled: ``False`` makes every call a no-op, chosen here once; the default is ``True``
            unless the ``MAELTRACE_DISABLED`` environment variable is set.
        warmup: default number of first samples of each key that the steady-state statistics
            skip (the reports then show both); 0 shows all samples only.
        run_id: the id every process of one run shares; default from ``MAELTRACE_RUN_ID`` or
            the launcher (``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID``), else a new one.
        device: the clock of ``gpu=True`` regions: ``torch`` (CUDA events), ``tensorflow``
            (device syncs), ``jax`` (waiting for outputs), ``cpu``, another name registered in
            `maeltrace.devices.registry`, or a factory building a
            `maeltrace.devices.DeviceClock`; default ``MAELTRACE_DEVICE``, else chosen at the
            first gpu region (`use_device`). Without a GPU, gpu regions get CPU times only.
        sync_every: with the ``tensorflow`` clock, measure device time of every N-th region of
            each key only (each measurement synchronises the device twice).
        nvtx: also open an NVTX range per region (``torch.cuda.nvtx``), named by the key, so
            Nsight Systems shows the same regions.
        xprof: also open a ``jax.profiler.TraceAnnotation`` per region, so XProf traces show
            the same regions.
        trace_key: the key whose regions each start a trace, with every region inside them
            (`Records.trace`); None puts every region into the run's trace.
        export: turn regions into OpenTelemetry spans and export them, at each trace-key
            region's end (the epoch's), `flush`, `close` and interpreter exit; default on
            unless ``MAELTRACE_EXPORT`` is off. With no OTLP endpoint, spans and stats files go
            to the output folder (the embedded default).
        endpoint: the OTLP endpoint; default ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``.
        protocol: ``grpc``, ``http/protobuf`` or ``http/json``; default
            ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, else ``http/protobuf``.
        output_dir: folder of this run's files; default ``$MAELTRACE_OUTPUT_DIR/<run id>``.
        trace_budget: spans per trace, and how batches are sampled beyond it.
        max_request_bytes: the most bytes of one export request, outbox record or traces file
            line (at least 4 KiB); default ``MAELTRACE_MAX_REQUEST_BYTES``, else 4 MiB, the
            gRPC limit. A request an endpoint still refuses for its size is halved and sent
            again.
        handle_signals: on SIGTERM or SIGINT, write the files first (within 5 s for all timers,
            ``maeltrace._signals.SIGNAL_TIMEOUT_S``), then let the signal end the process as it
            would have; a Python handler set before the timer is called afterwards, one set
            later replaces this. Only where the timer exports; default on unless
            ``MAELTRACE_SIGNALS`` is off.
        exporter: where spans are sent, as OpenTelemetry's SDK takes span processors: an
            object implementing `maeltrace.otel.exporters.SpanExporter` (``export(request)``
            raising `maeltrace.errors.ExportFailed`, and ``shutdown()``), such as
            `maeltrace.otel.exporters.JsonLinesExporter` or your own. The spans still wait in
            the run folder's outbox until it takes them, in requests of at most
            ``max_request_bytes`` (halved when refused for their size). Default: the exporter
            of ``endpoint`` and ``protocol``, else the traces file; given, those two are not
            used (``OTEL_SDK_DISABLED`` still turns export off).
        tracer_provider: an OpenTelemetry TracerProvider that the spans go through (the SDK
            path: its resource, sampler, processors and exporters apply); default the global
            one where you set one, else the fast path above. ``exporter`` wins over it;
            maeltrace never sets or shuts down a provider (`maeltrace.otel.sdk`).
        meter_provider: an OpenTelemetry MeterProvider for the ``maeltrace.region.duration``
            histogram; default the global one where you set one, else maeltrace's own OTLP
            metrics export where an endpoint is set, else none (`maeltrace.otel.metrics`).
        live: trackers that get each epoch's statistics while training runs, as a step series
            (step = the epoch's index): ``"mlflow"``, ``"wandb"``, both (``("mlflow",
            "wandb")`` or ``"mlflow,wandb"``); default ``MAELTRACE_LIVE``, else none. An epoch is
            a region of ``trace_key``; a background thread logs it, and ``close`` waits for it
            (at most 10 s). See `maeltrace.sinks.live.LiveLog`.
        memory: also measure the peak device memory of each gpu region, where the device clock
            reads it from the allocator without waiting for the device (torch on a GPU); a
            span attribute and a table row. Default ``MAELTRACE_MEMORY``, else off.
        flops_per_item: floating-point operations of one item (sample) of work, for model FLOPs
            utilisation (MFU) of the keys given ``items``.
        flops_per_token: the same per token, for the keys given ``tokens`` (about six times the
            parameter count for a transformer's training step).
        peak_flops: the device's peak FLOP/s, the denominator of MFU; default
            ``MAELTRACE_PEAK_FLOPS``, else none (no MFU).

    Raises:
        TypeError: ``exporter`` is not a `maeltrace.otel.exporters.SpanExporter`, or a
            provider has no ``get_tracer`` / ``get_meter``.
        ValueError: ``warmup`` is negative, ``MAELTRACE_DISABLED`` holds no yes/no word,
            ``device``, ``sync_every``, ``trace_key`` or ``live`` is not one the timer knows, or
            a FLOPs figure is not a positive finite number.
        ImportError: ``live`` names a tracker that is not installed.
        maeltrace.otel.export.ExportConfigError: the OTLP endpoint, protocol, headers, timeout
            or compression (arguments or ``OTEL_EXPORTER_OTLP_*``) are malformed; a
            ``ValueError`` too.

    Example:
        >>> import maeltrace
        >>> tmr = maeltrace.Timer()
        >>> for epoch in range(2):
        ...     with tmr.region(maeltrace.TimeType.EPOCH):
        ...         for batch in tmr.iterate(range(3)):
        ...             with tmr.region("batch"):
        ...                 pass
        >>> tmr.get_time_stats("batch").count
        6
    """

    def __init__(
        self,
        *,
        enabled: bool | None = None,
        warmup: int = 0,
        run_id: str | None = None,
        device: str | DeviceClockFactory | None = None,
        sync_every: int = 1,
        nvtx: bool = False,
        xprof: bool = False,
        trace_key: Key | None = TimeType.EPOCH,
        export: bool | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        trace_budget: TraceBudget | None = None,
        max_request_bytes: int | None = None,
        handle_signals: bool | None = None,
        exporter: SpanExporter | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        live: str | Sequence[str] | None = None,
        memory: bool | None = None,
        flops_per_item: float | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
    ) -> None:
        self.warmup = _check_warmup(warmup)
        if peak_flops is None and env_str(MAELTRACE_PEAK_FLOPS):
            peak_flops = _positive(env_str(MAELTRACE_PEAK_FLOPS), MAELTRACE_PEAK_FLOPS)
        self.throughput = {
            name: _positive(value, name)
            for name, value in (
                ("flops_per_item", flops_per_item),
                ("flops_per_token", flops_per_token),
                ("peak_flops", peak_flops),
            )
            if value is not None
        }
        """The FLOPs figures given, for MFU (``flops_per_item``, ``flops_per_token``,
        ``peak_flops``); the summary's metadata carries them."""
        self._measure_memory = env_flag(MAELTRACE_MEMORY) if memory is None else bool(memory)
        self.trace_key = None if trace_key is None else canonical_key(trace_key)
        if device is None:
            device = env_str(MAELTRACE_DEVICE) or None
            where = f" (from {MAELTRACE_DEVICE})"
        else:
            where = ""
        if isinstance(device, str) and not clocks.is_known(device):
            # Here, where the mistake is made: the clock itself is built at the first gpu region.
            names = ", ".join(clocks.clock_names())
            raise ValueError(f"unknown device {device!r}{where}; use one of {names}")
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be a positive int, not {sync_every!r}")
        self._device = device
        self._sync_every = sync_every
        self._closed = False
        self._exporter = check_exporter(exporter)
        providers = _check_providers(tracer_provider, meter_provider)
        self._export: ExportSession | None = None
        export_config: ExportConfig | None = None
        if trace_budget is not None:
            from maeltrace.otel.spans import TraceBudget

            if not isinstance(trace_budget, TraceBudget):
                raise TypeError(
                    f"trace_budget must be a maeltrace.otel.spans.TraceBudget, not "
                    f"{type(trace_budget).__name__}"
                )
        max_request_bytes = check_max_request_bytes(max_request_bytes)
        self.export = False
        self._clock: DeviceClock | None = None
        self._blocked: str | None = None  # the clock of the arrays blocked on before the choice
        self._device_times = DeviceTimes()
        self._counts = RegionCounts()
        self.run_id = run_id or run_id_from_environment() or new_run_id()
        self._files = RunFiles(self.run_id, output_dir)
        self.enabled = (not env_flag(MAELTRACE_DISABLED)) if enabled is None else bool(enabled)
        self.anchor = ClockAnchor.take()
        self._lock = threading.Lock()
        self._key_ids: dict[Key, int] = {}
        self._keys: list[Key] = []
        self._regions: dict[Key, Region] = {}
        self._gpu_regions: dict[Key, Region] = {}
        # Key -> the compiled region's ``counted`` and the counts' ``extend`` (`region`).
        self._counted: dict[Key, tuple[Callable[..., Region], Callable[..., None]]] = {}
        self._gpu_counted: dict[Key, tuple[Callable[..., Region], Callable[..., None]]] = {}
        self._annotator: Annotator | None = None
        self._failures: dict[int, str] = {}
        self._live: LiveLog | None = None
        self.implementation = "disabled"
        """Which recorder records: ``compiled``, ``python`` or ``disabled``."""
        if self.enabled:
            self.export = env_flag(MAELTRACE_EXPORT, default=True) if export is None else export
            if self.export:
                from maeltrace.otel.config import ExportConfig

                # Read now, so that a malformed endpoint or header fails here, not later in a
                # background thread.
                export_config = ExportConfig.from_env(endpoint=endpoint, protocol=protocol)
                if export_config is not None and export_config.disabled:
                    self.export = False
            self._bind_hot_path()
            self._export = ExportSession(
                run_id=self.run_id,
                owner=id(self),
                anchor=self.anchor,
                config=export_config,
                exporter=self._exporter,
                trace_budget=trace_budget,
                max_request_bytes=max_request_bytes,
                folder=self._files.intended_folder,
                suffix=self._file_suffix,
                snapshot=self._recorder.snapshot,
                live_state=self._live_state,
                tracer_provider=providers[0],
                meter_provider=providers[1],
            )
            self._handle_signals = self.export and (
                env_flag(MAELTRACE_SIGNALS, default=True)
                if handle_signals is None
                else bool(handle_signals)
            )
            _TIMERS.add(self)
            # Exit handlers run newest first: closing at exit comes before those of what was
            # set up before this timer (an SDK provider shuts itself down at exit, a tracker
            # ends its run), which the timer's last spans and series still need.
            atexit.unregister(_close_at_exit)
            atexit.register(_close_at_exit)
            if self._handle_signals:
                _signals.install(_signal_timers)
            if self.export and "opentelemetry.trace" in sys.modules:
                # The user traces with OpenTelemetry: root regions become children of the span
                # active when they open. Only root regions are asked, and only while
                # OpenTelemetry's context holds a span: the recorder reads its context variable
                # itself (or, where it cannot find it, asks at every root region).
                from maeltrace._recorder import otel_span_probe

                self._recorder.set_root_hook(self._export.on_root_open, *(otel_span_probe() or ()))
            if nvtx or xprof:
                self._annotate(annotators(nvtx=nvtx, xprof=xprof))
            if live is None:
                live = env_str(MAELTRACE_LIVE) or None
            if live:
                # Loaded by name, only when asked for: the timer never imports the sinks.
                self._live = load("maeltrace.sinks.live:LiveLog")(
                    live,
                    read=self._merged_records,
                    folder=self._files.intended_folder,
                    suffix=self._file_suffix,
                    run_id=self.run_id,
                )
        else:
            self.start = noop  # type: ignore[method-assign]  # bound no-op, chosen at build
            self.end = noop  # type: ignore[method-assign]  # bound no-op, chosen at build

    # -- the hot path --------------------------------------------------------------------------

    def _bind_hot_path(self) -> None:
        """Builds the recorder and binds its methods: no Python frame between user and store."""
        compiled = None if env_flag(MAELTRACE_PURE_PYTHON) else hotpath_recorder()
        recorder_type: type[_hotpath.Recorder] | type[PyRecorder] = compiled or PyRecorder
        self.implementation = "python" if compiled is None else "compiled"
        self._recorder = recorder = recorder_type(
            key_ids=self._key_ids,
            keys=self._keys,
            register_key=self._key_id,
            region_error=RegionError,
            on_failure=self._record_failure,
            thread_info=thread_info,
            device_open=self._device_open,
            device_close=self._device_close,
            device_block=self._device_block,
        )
        self.start = recorder.start  # type: ignore[method-assign]  # bound once, see docstring
        self.end = recorder.end  # type: ignore[method-assign]  # bound once, see docstring

    def _annotate(self, annotator: Annotator) -> None:
        """Wraps the recording calls so each region also opens a profiler annotation."""
        start, end = annotator.wrap(self.start, self.end)
        self.start = start  # type: ignore[method-assign]  # bound once, see docstring
        self.end = end  # type: ignore[method-assign, assignment]  # bound once, see docstring
        self._annotator = annotator

    # -- device clocks -------------------------------------------------------------------------

    @property
    def device_clock(self) -> DeviceClock | None:
        """The clock of gpu regions, once the first one chose it."""
        return self._clock

    def use_device(self, prefer: str | None = None) -> DeviceClock:
        """The device clock, choosing it now if no gpu region has yet.

        When the timer names no device, the choice follows `maeltrace.devices.registry.choose`:
        ``prefer``; the framework of the arrays regions blocked on before (`Region.block`); the
        framework with a GPU in use; the first imported of torch, jax, tensorflow. A choice among
        several frameworks, or no GPU, gives one `DeviceClockWarning`; it never raises. The
        first gpu region fixes the choice: its clock must start measuring when it opens, before
        the arrays it will block on exist.

        Args:
            prefer: the framework to use when the timer names none (integrations pass theirs).
        """
        with self._lock:
            if self._clock is None:
                if callable(self._device):
                    self._clock = self._device(self._device_times)
                else:
                    self._clock = clocks.make_clock(
                        self._device,
                        self._device_times,
                        prefer=prefer,
                        sync_every=self._sync_every,
                        blocked=self._blocked,
                        memory=self._measure_memory,
                    )
            return self._clock

    def _device_open(self, key_id: int) -> object:
        return (self._clock or self.use_device()).open(key_id)

    def _device_close(self, seq: int, handle: object, status: int) -> None:
        assert self._clock is not None
        self._clock.close(seq, handle, status)

    def _device_block(self, handle: object, value: T) -> T:
        if self._clock is None:
            if self._blocked is None:
                self._blocked = clocks.framework_of(value)
            return block_any(value)
        return self._clock.block(handle, value)

    def _flush_device(self) -> None:
        """Resolves every outstanding device time, waiting for the device if needed."""
        if self._clock is not None:
            self._clock.flush()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Resolves outstanding device times and exports every closed region as a span.

        Waits at most ``timeout_s`` for the export. Spans are on disk before they are sent (the
        outbox, `outbox_path`), and an endpoint that does not take them gets them again at the
        next epoch's end and at `close`. Regions of an epoch that is still open wait for its
        end. Never raises for the file system or the endpoint (see `ExportWarning`).
        """
        self._flush_device()
        if self.export and not self._closed and self._export is not None:
            self._export.request(wait_s=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flushes, exports this process's run span, writes the stats files and the Chrome trace
        into the output folder, and stops the exporter. Later calls do nothing.

        Waits at most ``timeout_s`` for the endpoint, saying on standard error that it waits
        when that takes more than a second. What could not be written or sent is kept (spans in
        the outbox for ``maeltrace replay``, files in a rescue folder) and one line on standard
        error says what and where. Never raises for the file system or the endpoint. Regions
        recorded afterwards are kept (the statistics include them) but no longer exported.
        """
        if self._closed or not self.enabled:
            return
        self._flush_device()
        if self._live is not None:
            self._live.close(min(timeout_s, LIVE_DRAIN_S))
        if not self.export or self._export is None:
            self._closed = True
            return
        self._export.pipeline()
        self._closed = True
        end = perf_counter_ns()
        summary = self.summary()
        clock = self._clock
        sent = self._export.close(
            end,
            timeout_s,
            summary.to_attributes(),
            (clock.name, clock.description) if clock is not None else None,
            self._rescue_dir,
        )
        written = self.write_outputs(summary)
        for line in (sent, self._files.close_line(written)):
            if line:
                print(line, file=sys.stderr)

    def write_outputs(self, summary: Summary | None = None) -> Path | None:
        """Writes ``stats.json``, ``stats.md`` and the Chrome trace ``trace.json`` (Perfetto,
        chrome://tracing) into the output folder, atomically; returns the folder.

        When the output folder cannot be written (not a folder, not writable, a full disk), the
        files go to a rescue folder under the system's temporary folder instead
        (``maeltrace-rescue/<run id>``), with one `ExportWarning`; that folder is returned, or
        None when it could not be written either. Never raises for the file system.

        Args:
            summary: the statistics to write; default `summary` now.
        """
        suffix = self._file_suffix()
        summary = summary or self.summary()
        clock = self._clock
        return self._files.write(
            summary,
            self.records(),
            self.anchor,
            suffix,
            failures=self.failures(),
            device_clock=clock.name if clock is not None else None,
        )

    @property
    def output_dir(self) -> Path:
        """This run's folder (created on first use): ``$MAELTRACE_OUTPUT_DIR/<run id>``.

        Raises:
            OSError: the folder cannot be created.
        """
        return self._files.folder

    def _rescue_dir(self) -> Path | None:
        """Where the files go when the output folder cannot take them."""
        return self._files.rescue_folder()

    @property
    def outbox_path(self) -> Path:
        """Where this timer's spans wait on disk until the OTLP endpoint took them; `maeltrace
        replay` sends what is still there. A second timer of the same run folder and process
        gets ``outbox.2``, and so on: this is the name once the outbox is open."""
        from maeltrace.otel._outbox import outbox_path

        opened = self._export.outbox_path() if self._export is not None else None
        return opened or outbox_path(self.output_dir, self._file_suffix())

    @property
    def traces_path(self) -> Path:
        """The OTLP JSON lines file of the embedded default (no endpoint configured)."""
        return self.output_dir / f"traces{self._file_suffix()}.otlp.jsonl"

    @property
    def export_health(self) -> PipelineStats:
        """What export did so far: spans exported, pending in the outbox, refused, lost, and
        the count of failed writes and exports (a copy)."""
        if self._export is None:
            from maeltrace.otel._pipeline import PipelineStats

            return PipelineStats(write_errors=self._files.errors)
        return self._export.health(self._files.errors)

    def _file_suffix(self) -> str:
        # The same sources as the metadata's rank (torch.distributed too), so that ranks of a
        # group started without RANK in the environment do not overwrite each other's files.
        return rank_suffix()

    def _live_state(self) -> LiveState:
        """What the export reads beside the logs, after them (`ExportSession`)."""
        with self._lock:
            keys = tuple(self._keys)
        clock = self._clock
        trace_key_id = self._key_ids.get(self.trace_key) if self.trace_key else None
        return LiveState(
            keys=keys,
            device_times=self._device_times.by_seq() if len(self._device_times) else {},
            device_offset_ns=clock.host_offset_ns if clock is not None else 0,
            counts=self._counts.counts() if len(self._counts) else {},
            peak_memory=self._device_times.memory_by_seq(),
            failures=dict(self._failures),
            device_clock=clock.name if clock is not None else None,
            trace_key_id=trace_key_id,
        )

    def _read_new(self) -> tuple[Records, dict[int, str], str | None]:
        """The regions closed since the last call (`ExportSession.read_new`)."""
        assert self._export is not None
        return self._export.read_new()

    def _on_trace_closed(self, ordinal: int) -> None:
        """An epoch ended: its device times are resolved and its spans are written to disk
        before its ``with`` block returns (waiting at most `STORE_WAIT_S`: a finished epoch
        survives a kill), then sent without waiting."""
        if self.export and not self._closed and self._export is not None:
            self._flush_device()
            self._export.request(stored_s=STORE_WAIT_S)
        elif self._live is not None:
            self._flush_device()
        if self._live is not None:
            self._live.epoch_ended(ordinal)

    def __enter__(self) -> Timer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _key_id(self, key: object) -> int:
        """The id of a key, registering (and validating) it on first use."""
        canonical = canonical_key(key)
        with self._lock:
            key_id = self._key_ids.get(canonical)
            if key_id is None:
                key_id = len(self._keys)
                self._keys.append(canonical)
                self._key_ids[canonical] = key_id
                if canonical == self.trace_key:
                    self._recorder.set_trace_key(key_id, self._on_trace_closed)
        return key_id

    def _record_failure(self, seq: int, exc: BaseException | None) -> None:
        # A description, not the exception: that would keep its traceback's frames alive.
        self._failures[seq] = "failed" if exc is None else f"{type(exc).__name__}: {exc}"

    def _forget_after_fork(self) -> None:
        """In a forked child: start from an empty store; the parent's copy is untouched, and
        only the parent exports (a data loader worker's regions stay in the worker)."""
        self._lock = threading.Lock()
        if self._export is not None:
            self._export.forget()
        self.export = False
        self._live = None  # its thread is the parent's
        self._failures.clear()
        self._device_times.clear()
        self._counts.clear()
        self._recorder.after_fork()

    # -- the public recording API --------------------------------------------------------------

    def start(self, key: Key, gpu: bool = False) -> None:
        """Opens a region of ``key`` on the calling thread.

        Args:
            key: the region key.
            gpu: also measure the region's device time, on the timer's device clock.

        Raises:
            RegionError: ``key`` is already open on this thread.
            TypeError: ``key`` is not a string.
            ValueError: ``key`` is empty or `TimeType.ALL`.
        """

    def end(self, key: Key) -> None:
        """Closes the calling thread's open region of ``key`` and records it (and its device
        measurement, for a region started with ``gpu=True``).

        Raises:
            RegionError: ``key`` is not open on this thread.
            TypeError: ``key`` is not a string.
            ValueError: ``key`` is empty or `TimeType.ALL`.
        """

    def cancel(self, key: Key) -> None:
        """Forgets the calling thread's open region of ``key`` without recording it.

        For a region that turned out not to be one, such as the wait for a batch that never
        comes after the last one. A cancelled region is nobody's parent: the regions opened
        inside it, already closed or still open, move to its parent (its nearest recorded
        ancestor) or, without one, become roots; in the records, spans and Chrome trace alike.
        Only regions the exporter already took while it was open (by a `flush`, or, outside
        epochs, by an epoch's end) keep it as their parent.

        Raises:
            RegionError: ``key`` is not open on this thread.
            TypeError: ``key`` is not a string.
            ValueError: ``key`` is empty or `TimeType.ALL`.
        """
        if self.enabled:
            self._recorder.discard(self._key_id(key))
        else:
            canonical_key(key)

    def is_open(self, key: Key) -> bool:
        """Whether ``key`` has an open region on the calling thread."""
        key_id = self._key_ids.get(canonical_key(key))
        return key_id is not None and self.enabled and self._recorder.is_open(key_id)

    def region(
        self, key: Key, gpu: bool = False, *, items: int | None = None, tokens: int | None = None
    ) -> Region:
        """A context manager timing its body under ``key``.

        A body that raises is recorded with a failed status, and the exception propagates.
        The returned object is cached per key and flag, and may be reused; one given a count
        is made per call.

        Args:
            key: the region key.
            gpu: also measure the body's device time; see `Region.block` for JAX.
            items: the items (samples) the body works on, such as the batch size: the key's
                throughput (items/s) in the statistics, tables, spans, metrics and sinks.
            tokens: the tokens it works on, for tokens/s (and MFU with ``flops_per_token``).

        Raises:
            TypeError: ``key`` is not a string, or a count is not a whole number.
            ValueError: ``key`` is empty or `TimeType.ALL`, or a count is negative.
        """
        if items is not None or tokens is not None:
            if type(items) is int and items >= 0 and tokens is None:  # the common case
                try:
                    counted, extend = (self._gpu_counted if gpu else self._counted)[key]
                    return counted(items, 0, extend)
                except (KeyError, TypeError):
                    pass
            return self._counted_region(key, gpu, items, tokens)
        cache = self._gpu_regions if gpu else self._regions
        try:
            return cache[key]
        except (KeyError, TypeError):
            pass
        if not self.enabled:
            canonical_key(key)
            return NULL_REGION
        key_id = self._key_id(key)
        region: Region = self._recorder.region(self._keys[key_id], key_id, gpu)
        if self._annotator is not None:
            region = self._annotator.region(region)
        cache[self._keys[key_id]] = region
        return region

    def _counted_region(self, key: Key, gpu: bool, items: int | None, tokens: int | None) -> Region:
        """`region` with a count: the compiled region's ``counted`` (cached per key), else the
        region wrapped in a `CountedRegion` (an annotated or pure-Python one)."""
        counts = _counts(items, tokens)
        plain = self.region(key, gpu)
        if plain is NULL_REGION:
            return plain
        key_id = self._key_ids[canonical_key(key)]
        extend = self._counts.extend
        counted = getattr(plain, "counted", None)
        if counted is not None:
            (self._gpu_counted if gpu else self._counted)[self._keys[key_id]] = (counted, extend)
            region: Region = counted(*counts, extend)
            return region
        return CountedRegion((plain, key_id, self._recorder.open_seq, extend), *counts)

    def add_items(self, key: Key, items: int = 0, tokens: int = 0) -> None:
        """Adds to the count of the calling thread's open region of ``key``, for work known
        only inside it (tokens after padding is removed, items of a variable batch); several
        counts of one region add up. See `region` for what counts give.

        Raises:
            RegionError: ``key`` is not open on this thread.
            TypeError: ``key`` is not a string, or a count is not a whole number.
            ValueError: ``key`` is empty or `TimeType.ALL`, or a count is negative.
        """
        if not (type(items) is int and type(tokens) is int and items >= 0 and tokens >= 0):
            items, tokens = _counts(items, tokens)
        if not self.enabled:
            canonical_key(key)
            return
        try:
            key_id = self._key_ids[key]  # a key in use: no lock, no check
        except (KeyError, TypeError):
            key_id = self._key_id(key)
        seq = self._recorder.open_seq(key_id)
        if seq < 0:
            raise RegionError(
                f"no region of {str(canonical_key(key))!r} is open on this thread to count items in"
            )
        self._counts.add(seq, items, tokens)

    def timed(self, key: Key) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A decorator timing every call of the function under ``key``.

        A call that raises is recorded with a failed status, and the exception propagates. A
        recursive call of the function opens the key again and raises `RegionError`. The key is
        registered when the function first runs, not when it is decorated: keys in tables and
        reports follow first use, and a function never called leaves no key.

        Raises:
            TypeError: ``key`` is not a string, or the decorated function is a coroutine or
                generator function (whose calls return before their work is done).
            ValueError: ``key`` is empty or `TimeType.ALL`.
        """
        # Validated now, so a bad key fails where it is written; registered at the first call.
        canonical = canonical_key(key)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
                raise TypeError(
                    f"{fn.__qualname__} returns before its work is done; time its body with "
                    "Timer.region instead"
                )
            if not self.enabled:
                return fn

            region: Region | None = None

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                nonlocal region
                # One load and test per call; the lookup and registration run once. Two
                # threads racing on the first call get equal regions of the same key.
                current = region
                if current is None:
                    current = region = self.region(canonical)
                with current:
                    return fn(*args, **kwargs)

            return wrapper

        return decorate

    def iterate(self, iterable: Iterable[T], key: Key = TimeType.IO) -> Iterator[T]:
        """Yields the items of ``iterable``, timing each fetch of the next one under ``key``.

        This is the IO row of the seed's tables: one region per item, covering the time the
        loop waited for it. The final fetch that finds the iterable exhausted is not recorded,
        so the count equals the number of items (its time, such as a data loader shutting down
        its workers, is not in the IO row). A fetch that raises is recorded as failed.

        Raises:
            TypeError: ``key`` is not a string, or ``iterable`` is not iterable.
            ValueError: ``key`` is empty or `TimeType.ALL`.
        """
        iterator = iter(iterable)
        if not self.enabled:
            canonical_key(key)
            return iterator
        return self._iterate(iterator, self._key_id(key))

    def _iterate(self, iterator: Iterator[T], key_id: int) -> Iterator[T]:
        recorder = self._recorder
        open_region = recorder.open
        close_region = recorder.close
        annotator = self._annotator
        while True:
            open_region(key_id)
            token = annotator.begin(self._keys[key_id]) if annotator else None
            try:
                item = next(iterator)
            except StopIteration:
                recorder.discard(key_id)
                return
            except BaseException as exc:
                recorder.fail(key_id, exc)
                raise
            finally:
                if annotator:
                    annotator.end(token)
            close_region(key_id, STATUS_OK)
            yield item

    def reset(self) -> None:
        """Drops every recorded region. Regions open now stay open and are recorded when they
        end; keys keep their first-use order."""
        if self.enabled:
            self.flush()
            with self._lock:
                self._recorder.clear_records()
                self._failures.clear()
                self._device_times.clear()
                self._counts.clear()
                if self._export is not None:
                    self._export.offsets.clear()
            # What was freed goes back to the system, not only to the C heap (glibc keeps it).
            from maeltrace._recorder import release_free_memory

            release_free_memory()

    # -- reading -------------------------------------------------------------------------------

    def records(self, *, flush: bool = True) -> Records:
        """A snapshot of every closed region, as columns in start order.

        Args:
            flush: first wait for outstanding device times (`flush`); ``False`` takes those
                resolved so far.
        """
        if not self.enabled:
            return Records.merge([], ())
        if flush:
            self._flush_device()
        elif self._clock is not None:
            self._clock.poll()
        return self._merged_records()

    def _merged_records(self) -> Records:
        """The records as they are, without waiting for or polling the device clock (the live
        thread reads them so: the epoch's end resolved its device times)."""
        # Regions first, keys second: a key is registered before any of its regions opens, so
        # every region of the snapshot finds its key.
        logs = self._recorder.snapshot()
        with self._lock:
            keys = tuple(self._keys)
        offset = self._clock.host_offset_ns if self._clock is not None else 0
        return Records.merge(
            logs,
            keys,
            self._device_times.by_seq(),
            device_offset_ns=offset,
            counts=self._counts.counts() if len(self._counts) else None,
            peak_memory=self._device_times.memory_by_seq(),
        )

    def failures(self) -> dict[int, str]:
        """The exceptions of failed regions, by the region's sequence number."""
        return dict(self._failures)

    def keys(self) -> list[Key]:
        """The keys with at least one completed region, in order of first use."""
        records = self.records(flush=False)
        done = {k for k, s in zip(records.key_id, records.status, strict=True) if s == STATUS_OK}
        return [key for key_id, key in enumerate(records.keys) if key_id in done]

    def _durations_ns(self, key: Key, warmup: int | None, gpu: bool) -> Sequence[int]:
        canonical = canonical_key(key)
        skip = self.warmup if warmup is None else _check_warmup(warmup)
        key_id = self._key_ids.get(canonical)
        durations: Sequence[int] = ()
        if key_id is not None and self.enabled:
            # This key's columns only, straight from the logs: 16 B per region of the key,
            # where records() copies every column of every key (see records.key_samples).
            if gpu:
                self._flush_device()
            elif self._clock is not None:
                self._clock.poll()
            seqs, cpu = self._recorder.key_durations(key_id)
            device = self._device_times.by_seq() if len(self._device_times) else None
            durations = key_samples(seqs, cpu, device, gpu=gpu)
        if not durations:
            timed = [str(k) for k in self.keys()]
            what = "with a device time " if gpu else ""
            no_gpu = getattr(self._clock, "no_gpu_reason", None) if gpu else None
            why = f" (no GPU: {no_gpu}; gpu=True regions have CPU times only)" if no_gpu else ""
            raise KeyError(
                f"no region was completed {what}under {str(canonical)!r}{why}; "
                f"timed keys: {timed or 'none'}"
            )
        return durations[skip:] if skip else durations

    def get_time(self, key: Key, gpu: bool = False, *, warmup: int | None = None) -> list[float]:
        """The durations of ``key``'s completed regions in seconds, in start order.

        Regions during which the device clock saw compilation (JAX's first call of a jitted
        function) are reported apart and left out here.

        Args:
            key: the region key.
            gpu: the device durations (of the regions that have one) instead of the CPU ones.
            warmup: first samples to skip; default the timer's ``warmup``.

        Returns:
            A new list, which the caller may change.

        Raises:
            KeyError: no region of ``key`` completed; the message names the keys that did.
            ValueError: ``warmup`` is negative.
        """
        return [d / 1e9 for d in self._durations_ns(key, warmup, gpu)]

    def get_time_stats(
        self, key: Key, gpu: bool = False, *, warmup: int | None = None
    ) -> TimeStats:
        """The statistics of ``key``'s completed regions.

        Args:
            key: the region key.
            gpu: the device durations' statistics instead of the CPU ones.
            warmup: first samples to skip; default the timer's ``warmup``.

        Raises:
            KeyError: no region of ``key`` completed; the message names the keys that did.
            ValueError: ``warmup`` is negative or skips every sample.
        """
        durations = self._durations_ns(key, warmup, gpu)
        if not durations:
            raise ValueError(f"warmup skips every sample of {key!r}")
        return compute_stats(durations)

    def summary(self, *, warmup: int | None = None) -> Summary:
        """Statistics of every key, in first-use order, as the reports print them."""
        from maeltrace.report import Summary

        skip = self.warmup if warmup is None else _check_warmup(warmup)
        records = self.records()
        clock = self._clock
        metadata = run_metadata(self.anchor, self.run_id)
        if clock is not None:
            metadata["device_clock"] = {"name": clock.name, "description": clock.description}
            no_gpu = getattr(clock, "no_gpu_reason", None)
            if no_gpu:
                metadata["device_clock"]["no_gpu_reason"] = no_gpu
        if self.throughput:
            metadata["throughput"] = dict(self.throughput)
        return Summary.from_records(
            records,
            warmup=skip,
            metadata=metadata,
            device_clock=clock.name if clock is not None else None,
        )

    def print_all_time_stats(
        self, file: IO[str] | None = None, *, warmup: int | None = None
    ) -> None:
        """Prints the seed's table of every key (and the steady-state table when warmup is set).

        Args:
            file: text stream to print to; default standard output.
            warmup: first samples of each key to leave out of the steady-state table.
        """
        print(self.summary(warmup=warmup).to_markdown(), file=file, end="")

    def save_all_time_stats(
        self,
        filename: str | os.PathLike[str],
        *,
        exist_ok: bool = True,
        warmup: int | None = None,
    ) -> None:
        """Writes the statistics of every key to a file, atomically.

        The format follows the suffix: ``.txt`` and ``.md`` get the printed table, ``.csv``
        one row per key and sample set, ``.json`` every field with units and run metadata.

        Args:
            filename: where to write; its folder must exist.
            exist_ok: ``False`` refuses to replace an existing file, as Deep500's timer did.
            warmup: first samples of each key to leave out of the steady-state rows.

        A file system that refuses the write (a missing or read-only folder, a full disk) gives
        one `ExportWarning` and a count (`export_health`), not an exception: the statistics stay
        readable from the timer.

        Raises:
            ValueError: the suffix names no supported format.
            FileExistsError: the file exists and ``exist_ok`` is false.
        """
        self._files.save(self.summary(warmup=warmup), filename, exist_ok=exist_ok)

    def gather_stats(self, group: Any = None, *, warmup: int | None = None) -> GatheredStats:
        """Every rank's statistics of every key, and across ranks the slowest rank, the max/min
        ratio of means and pooled statistics, from fixed-size summaries; a collective with
        ``torch.distributed`` initialised. See `maeltrace.distributed.gather_stats`, which states
        the accuracy of the pooled percentiles."""
        gather: Callable[..., GatheredStats] = load("maeltrace.distributed:gather_stats")
        return gather(self, group, warmup=warmup)

    def log_mlflow_all(
        self, prefix: str = "", stats: str = "mean", **options: Any
    ) -> dict[str, float]:
        """Logs the statistics of every key to MLflow, CPU and GPU rows in one batch, and the
        stats files and Chrome trace as artifacts; see `maeltrace.sinks.mlflow.log_summary`
        (loaded by name: the timer never imports the sinks).

        As in Deep500, each key's mean is named ``prefix + key`` (a ``/`` added after a
        non-empty prefix); ``stats="all"`` logs min, mean, median, max, stdev, p95 and count. It
        uses the active MLflow run or starts one. MLflow being down gives one
        `maeltrace.SinkWarning` within seconds, and the metrics are kept in the output
        folder; training goes on. A disabled timer logs nothing.

        Returns:
            The metrics, by name.

        Raises:
            ImportError: mlflow is not installed (``pip install 'maeltrace[mlflow]'``).
            ValueError: ``stats`` is not ``mean`` or ``all``.
        """
        return self._log_summary("maeltrace.sinks.mlflow:log_summary", prefix, stats, options)

    def log_wb_all(self, prefix: str = "", stats: str = "mean", **options: Any) -> dict[str, float]:
        """Logs the statistics of every key to Weights & Biases in one ``wandb.log`` call (one
        step), and the files as an artifact; see `maeltrace.sinks.wandb.log_summary` (loaded by
        name).

        Names as `log_mlflow_all`. Uses ``wandb.run`` or starts one. A disabled timer logs
        nothing.

        Returns:
            The metrics, by name.

        Raises:
            ImportError: wandb is not installed (``pip install 'maeltrace[wandb]'``).
            ValueError: ``stats`` is not ``mean`` or ``all``.
        """
        return self._log_summary("maeltrace.sinks.wandb:log_summary", prefix, stats, options)

    def _log_summary(
        self, sink: str, prefix: str, stats: str, options: dict[str, Any]
    ) -> dict[str, float]:
        """Hands the summary to ``sink``'s ``log_summary`` (a lazy reference), with the run's
        files as its artifacts; a disabled timer hands None, which only checks the arguments."""
        if self._live is not None:
            self._live.flush(LIVE_DRAIN_S)  # the epochs first: the run a live series started
        summary = self.summary() if self.enabled else None

        def files() -> list[Path]:  # the stats files, trace and reports, written now
            folder = self.write_outputs(summary)
            if folder is None:  # nothing could be written; write_outputs warned
                return []
            return self._files.artifacts(folder, self._file_suffix())

        log: Callable[..., dict[str, float]] = load(sink)
        # The folder's path only: the sink creates it when it writes there, inside its own
        # fault handling, so a disk that refuses it never raises here.
        folder = self._files.intended_folder()
        return log(summary, folder=folder, files=files, prefix=prefix, stats=stats, **options)

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Timer {state}, {len(self._keys)} keys, warmup={self.warmup}>"


def _counts(items: int | None, tokens: int | None) -> tuple[int, int]:
    """``(items, tokens)`` as whole numbers, None as 0 (numpy and torch integers accepted)."""
    out = []
    for name, value in (("items", items), ("tokens", tokens)):
        if value is None:
            out.append(0)
            continue
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a whole number, not {value!r}")
        try:
            count = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be a whole number, not {type(value).__name__}") from None
        if count < 0:
            raise ValueError(f"{name} must not be negative, not {count}")
        out.append(count)
    return out[0], out[1]


def _positive(value: object, name: str) -> float:
    """A FLOPs figure as a positive finite float."""
    try:
        number = float(value)  # type: ignore[arg-type]  # checked below
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")
    return number


def _check_warmup(warmup: int) -> int:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, not {warmup!r}")
    return warmup

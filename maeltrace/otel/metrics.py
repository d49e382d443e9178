"""maeltrace's metrics, off the training thread: the ``maeltrace.region.duration`` histogram (one
point per region), the items and tokens counters and the peak-memory gauge."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from maeltrace._version import __version__
from maeltrace.environment import (
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_METRICS_EXPORTER,
    env_str,
)
from maeltrace.errors import ExportWarning, warn_safely
from maeltrace.otel import semconv
from maeltrace.otel._sdk_logs import sdk_logs_counted
from maeltrace.records import NO_DEVICE_TIME, STATUS_OK, Records

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider

    from maeltrace.otel.config import ExportConfig

__all__ = [
    "DURATION_BUCKETS_S",
    "RegionMetrics",
    "check_meter_provider",
    "region_metrics",
    "user_meter_provider",
]

DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""The histogram's bucket boundaries, in seconds, given to the SDK as advice (a View of the
user's wins): from a 0.1 ms step to an hour's epoch. OpenTelemetry's default boundaries are made
for milliseconds and would put every step time below 5 s into one bucket."""

_NS_PER_S = 1e9

SHARE = 0.02
"""The most of the time the histogram's thread records while training runs: after each slice of
`SLICE` regions it rests ``1 / SHARE - 1`` times as long as the slice took, so that the training
thread has the GIL. The OpenTelemetry SDK takes about 10 µs a point: unpaced, a loop of short
regions ran twice as slow beside it. `flush` and `close` record without resting."""

SLICE = 256
"""Regions recorded between two rests (`SHARE`)."""

_EXPORT_LOGGERS = (
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)
"""The loggers through which the SDK's metric reader and the official OTLP metric exporters
(HTTP, gRPC; the names of recent and older releases) report a failed or retried export."""


def check_meter_provider(provider: object) -> MeterProvider | None:
    """``provider`` as an OpenTelemetry MeterProvider, or None.

    Raises:
        TypeError: it has no callable ``get_meter``, or is a class.
    """
    if provider is None:
        return None
    if isinstance(provider, type) or not callable(getattr(provider, "get_meter", None)):
        raise TypeError(
            "meter_provider must be an OpenTelemetry MeterProvider (with get_meter), not "
            f"{getattr(provider, '__name__', type(provider).__name__)}"
        )
    return provider  # type: ignore[return-value]  # checked structurally just above


def user_meter_provider(given: MeterProvider | None = None) -> MeterProvider | None:
    """``given``, else the global MeterProvider where the user set one (not the default proxy
    or no-op), else None; reads it only where the user imported OpenTelemetry's metrics API."""
    if given is not None:
        return given
    if "opentelemetry.metrics" not in sys.modules:
        return None
    from opentelemetry import metrics
    from opentelemetry.metrics import NoOpMeterProvider

    provider = metrics.get_meter_provider()
    # The API's default before a provider is set: a proxy (private class, matched by name).
    if isinstance(provider, NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider":
        return None
    return provider


class RegionMetrics:
    """Records each closed region's durations in the ``maeltrace.region.duration`` histogram
    (unit ``s``; attributes ``maeltrace.key`` and ``maeltrace.clock``, ``cpu`` or ``gpu``).

    Failed regions are left out, as the statistics leave them out. `record` never raises: a
    failure is one `maeltrace.errors.ExportWarning` and a count (`errors`). So is each export of
    maeltrace's own provider that failed (an endpoint down): the SDK's log records of it are
    counted and silenced, not printed every interval.

    Args:
        provider: the MeterProvider to record through.
        owned: maeltrace built ``provider`` (its own OTLP export) and shuts it down at `close`;
            a user's provider is left alone.
    """

    def __init__(self, provider: MeterProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self.owned = owned
        meter = provider.get_meter(semconv.SCOPE_NAME, __version__, schema_url=semconv.SCHEMA_URL)
        self._histogram: Histogram = meter.create_histogram(
            semconv.REGION_DURATION,
            unit=semconv.REGION_DURATION_UNIT,
            description="Duration of each timed region, by key and clock",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self._counters: tuple[Counter, Counter] = (
            meter.create_counter(
                semconv.REGION_ITEMS, unit="{item}", description="Items the regions worked on"
            ),
            meter.create_counter(
                semconv.REGION_TOKENS, unit="{token}", description="Tokens the regions worked on"
            ),
        )
        self._memory = meter.create_gauge(
            semconv.REGION_MEMORY_PEAK,
            unit="By",
            description="Largest peak device memory of a key's regions since the last record",
        )
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}
        self.points = 0
        """Data points recorded."""
        self.errors = 0
        """Batches of regions that could not be recorded, failed exports of maeltrace's own
        provider, and failed shutdowns."""
        self.no_metrics = False
        """The endpoint takes no metrics; the own export stopped (`endpoint_takes_none`)."""
        self.endpoint_warned: Callable[[], bool] = lambda: False
        """Whether the spans' export already warned that the endpoint is down: an own export's
        failures to the same endpoint are then only counted (one warning per endpoint)."""
        self._warned = False

    def _labels(self, key: str, clock: str) -> dict[str, str]:
        found = self._attributes.get((key, clock))
        if found is None:
            found = {semconv.MAELTRACE_KEY: key, semconv.MAELTRACE_CLOCK: clock}
            self._attributes[(key, clock)] = found
        return found

    def record(self, records: Records, hurry: threading.Event | None = None) -> None:
        """Records the durations of ``records`` (regions not given before).

        Args:
            records: the regions.
            hurry: rest after each slice of regions (`SHARE`) until this is set; None records
                without resting.
        """
        try:
            record = self._histogram.record
            names = [str(k) for k in records.keys]
            start, end, status = records.start_ns, records.end_ns, records.status
            device, key_id = records.device_ns, records.key_id
            cpu, gpu = semconv.MAELTRACE_CLOCK_CPU, semconv.MAELTRACE_CLOCK_GPU
            began = time.perf_counter()
            for i in range(len(records)):
                if hurry is not None and i % SLICE == SLICE - 1 and not hurry.is_set():
                    hurry.wait((time.perf_counter() - began) * (1 / SHARE - 1))
                    began = time.perf_counter()
                if status[i] != STATUS_OK:
                    continue
                name = names[key_id[i]]
                record((end[i] - start[i]) / _NS_PER_S, self._labels(name, cpu))
                self.points += 1
                if device[i] != NO_DEVICE_TIME:
                    record(device[i] / _NS_PER_S, self._labels(name, gpu))
                    self.points += 1
            if records.counts or records.peak_memory:
                self._record_work(records, names)
        except Exception as exc:  # never into training
            self._fail(exc)

    def _record_work(self, records: Records, names: list[str]) -> None:
        """Adds the regions' counts to the counters, one add per key and unit, and sets the
        gauge to each key's largest peak."""
        totals: dict[int, list[int]] = {}
        peaks: dict[int, int] = {}
        work, memory = records.work(), records.peak_memory
        for seq, key_id, status in zip(records.seq, records.key_id, records.status, strict=True):
            if status != STATUS_OK:
                continue
            count = work.get(seq)
            if count is not None:
                total = totals.setdefault(key_id, [0, 0])
                total[0] += count[0]
                total[1] += count[1]
            if seq in memory:
                peaks[key_id] = max(peaks.get(key_id, 0), memory[seq])
        for key_id, pair in totals.items():
            labels = {semconv.MAELTRACE_KEY: names[key_id]}
            for counter, value in zip(self._counters, pair, strict=True):
                if value:
                    counter.add(value, labels)
                    self.points += 1
        for key_id, peak in peaks.items():
            self._memory.set(peak, {semconv.MAELTRACE_KEY: names[key_id]})
            self.points += 1

    def close(self, wait_s: float) -> None:
        """Sends what is left and stops maeltrace's own provider, waiting at most ``wait_s``
        seconds (an endpoint that never answers must not hold the process's end: the
        exporter's own timeout and retries may last longer); a user's provider is left alone."""
        if not self.owned:
            return
        closing = threading.Thread(
            target=self._shutdown, args=(wait_s,), name="maeltrace-metrics-close", daemon=True
        )
        closing.start()
        closing.join(max(wait_s, 0.0))
        if closing.is_alive():
            self._fail(TimeoutError(f"the last points were not sent within {wait_s:g} s"))

    def _shutdown(self, wait_s: float) -> None:
        try:
            shutdown: Any = self.provider.shutdown  # type: ignore[attr-defined]  # SDK's provider
            shutdown(timeout_millis=max(1.0, wait_s * 1000))
        except Exception as exc:  # never into training
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._count(
            f"cannot record the {semconv.REGION_DURATION} metric: {type(exc).__name__}: {exc}"
        )

    def export_failed(self, cause: str) -> None:
        """Counts one failed export of maeltrace's own provider (called on the SDK's export
        thread) and warns about the first; an endpoint that takes no metrics at all is
        `endpoint_takes_none` instead."""
        if NO_METRICS.search(cause):
            self.endpoint_takes_none(cause)
        elif self.endpoint_warned():
            self.errors += 1
        else:
            self._count(f"the metrics were not sent: {cause.rstrip('. ')}")

    def endpoint_takes_none(self, cause: str) -> None:
        """The endpoint answered that it takes no metrics (a traces-only backend such as Jaeger:
        HTTP 404, gRPC UNIMPLEMENTED): not a failure of the run, so one line on the
        ``maeltrace`` logger at INFO, no warning; the own export stops (`no_metrics`)."""
        if not self.no_metrics:
            self.no_metrics = True
            logging.getLogger("maeltrace").info(
                "maeltrace: the OTLP endpoint takes no metrics (%s); %s is not exported. Set "
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT to a Collector's, or "
                "OTEL_METRICS_EXPORTER=none",
                cause.rstrip(". "),
                semconv.REGION_DURATION,
            )

    def _count(self, what: str) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            warn_safely(f"maeltrace: {what}; later failures are only counted", ExportWarning)


def _metrics_endpoint(config: ExportConfig) -> str | None:
    """The metrics endpoint next to the traces one, or None to let the exporter read
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` itself."""
    from maeltrace.otel.config import GRPC

    if env_str(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT):
        return None
    if config.protocol == GRPC:
        return config.endpoint
    base, sep, _ = config.endpoint.rpartition("/v1/traces")
    return base + "/v1/metrics" if sep else None


NO_METRICS = re.compile(r"code: (?:404\b|StatusCode\.UNIMPLEMENTED)")
"""The OTLP exporters' words for an endpoint without a metrics service: HTTP 404, gRPC
UNIMPLEMENTED."""


def _counted(exporter_class: Any) -> Any:
    """``exporter_class`` (an official OTLP metric exporter) whose exports turn the SDK's log
    records of a failure into one call of its ``failed(cause)`` each (`sdk_logs_counted`)."""
    from opentelemetry.sdk.metrics.export import MetricExportResult

    class CountedMetricExporter(exporter_class):  # type: ignore[misc]  # the SDK is untyped
        failed: Callable[[str], None] = staticmethod(lambda cause: None)
        """Set to `RegionMetrics.export_failed` once the provider's recorder exists."""

        takes_none = False
        """The endpoint said it takes no metrics: later exports are dropped unsent."""

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            if self.takes_none:
                return MetricExportResult.SUCCESS
            causes: list[str] = []

            def logged(exc: BaseException | None, message: str | None) -> None:
                causes.append(message or f"{type(exc).__name__}: {exc}")

            result: Any = MetricExportResult.FAILURE
            with sdk_logs_counted(_EXPORT_LOGGERS, logged, silence=logging.WARNING):
                try:
                    result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                except Exception as exc:  # never into the SDK's log, nor training
                    logged(exc, None)
            if result != MetricExportResult.SUCCESS or causes:
                cause = causes[0] if causes else "the exporter reported a failure"
                self.takes_none = bool(NO_METRICS.search(cause))
                self.failed(cause)
            return result

    return CountedMetricExporter


def _own_provider(
    config: ExportConfig, resource_attributes: Mapping[str, object]
) -> tuple[Any, Any]:
    """A MeterProvider of maeltrace's own, sending by OTLP (the official exporter, `_counted`)
    where ``config`` sends spans, never global; and its exporter, whose ``failed`` the caller
    points at the recorder."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    from maeltrace.otel.config import GRPC

    endpoint = _metrics_endpoint(config)
    headers = dict(config.headers)
    exporter: Any
    if config.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = _counted(OTLPMetricExporter)(
            endpoint=endpoint,
            insecure=not config.secure,
            headers=headers or None,
            timeout=config.timeout_s,
        )
    else:  # OTLP/JSON has no official Python exporter: metrics go as protobuf
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        exporter = _counted(HttpMetricExporter)(
            endpoint=endpoint, headers=headers or None, timeout=config.timeout_s
        )
    values = {
        k: v for k, v in resource_attributes.items() if isinstance(v, str | bool | int | float)
    }
    reader = PeriodicExportingMetricReader(exporter)
    return MeterProvider(metric_readers=[reader], resource=Resource(values)), exporter


def region_metrics(
    given: MeterProvider | None,
    config: ExportConfig | None,
    resource_attributes: Mapping[str, object],
) -> RegionMetrics | None:
    """The histogram's recorder: through ``given``, else the user's global MeterProvider, else
    maeltrace's own OTLP metrics export where ``config`` names an endpoint (and
    ``OTEL_METRICS_EXPORTER`` is not ``none``, and the ``otel`` extra is installed), else None.

    Raises:
        Exception: the provider or the exporter could not be built (the caller warns).
    """
    provider = user_meter_provider(given)
    if provider is not None:
        return RegionMetrics(provider)
    if config is None or config.disabled:
        return None
    if env_str(OTEL_METRICS_EXPORTER, "").strip().lower() == "none":
        return None
    from importlib.util import find_spec

    if find_spec("opentelemetry.sdk") is None or find_spec("opentelemetry.exporter") is None:
        return None  # without the otel extra, spans only, as before
    provider, exporter = _own_provider(config, resource_attributes)
    metrics = RegionMetrics(provider, owned=True)
    # Before the reader's first export (one interval away): failures count from the start.
    exporter.failed = metrics.export_failed
    return metrics

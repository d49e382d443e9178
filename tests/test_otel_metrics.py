"""The ``maeltrace.region.duration`` histogram: the user's MeterProvider, or maeltrace's OTLP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk (otel extra)")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from maeltrace import Timer, TimeType
from maeltrace._version import __version__
from maeltrace.errors import ExportWarning
from maeltrace.otel import semconv
from maeltrace.otel.metrics import DURATION_BUCKETS_S
from tests.fakes.cuda import fake_gpu_clock
from tests.services.collector import CollectorService
from tests.services.jaeger import JaegerService

BOTH_RECORDERS = True


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, str], HistogramDataPoint]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[tuple[str, str], HistogramDataPoint] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert (sm.scope.name, sm.scope.version, sm.scope.schema_url) == (
                "maeltrace",
                __version__,
                semconv.SCHEMA_URL,
            )
            for metric in sm.metrics:
                assert metric.name == semconv.REGION_DURATION
                assert metric.unit == "s"
                for point in metric.data.data_points:
                    assert isinstance(point, HistogramDataPoint)
                    attrs = dict(point.attributes or {})
                    assert set(attrs) == {semconv.MAELTRACE_KEY, semconv.MAELTRACE_CLOCK}
                    out[
                        (str(attrs[semconv.MAELTRACE_KEY]), str(attrs[semconv.MAELTRACE_CLOCK]))
                    ] = point
    return out


def _train(tmr: Timer, epochs: int = 3, batches: int = 4) -> None:
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in range(batches):
                with tmr.region(TimeType.BATCH, gpu=True), tmr.region("forward"):
                    pass


class TestThroughTheUsersMeterProvider:
    def test_one_point_per_region_and_clock(self, tmp_path: Path) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        # The named fake GPU (none here): a device time for each gpu=True region.
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, meter_provider=provider
        )
        _train(tmr)
        tmr.close()
        points = _points(reader)
        assert {k: p.count for k, p in points.items()} == {
            ("epoch", "cpu"): 3,
            ("batch", "cpu"): 12,
            ("batch", "gpu"): 12,
            ("forward", "cpu"): 12,
        }
        assert points[("forward", "cpu")].sum == pytest.approx(sum(tmr.get_time("forward")))
        assert points[("batch", "gpu")].sum == pytest.approx(sum(tmr.get_time("batch", gpu=True)))
        assert tuple(points[("epoch", "cpu")].explicit_bounds) == DURATION_BUCKETS_S

    def test_recorded_at_each_epochs_end_not_only_at_close(self, tmp_path: Path) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        tmr = Timer(export=True, output_dir=tmp_path, meter_provider=provider)
        with tmr.region(TimeType.EPOCH):
            for _ in range(5):
                with tmr.region(TimeType.BATCH):
                    pass
        tmr.flush()
        assert _points(reader)[("batch", "cpu")].count == 5
        tmr.close()

    def test_a_loop_that_outruns_the_paced_histogram_loses_points_not_regions(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from maeltrace.errors import ExportWarning
        from maeltrace.otel import _session, metrics

        # A histogram thread that rests ten thousand times as long as it records (instead of
        # fifty), and room for 300 waiting regions: the epochs pile up behind it.
        monkeypatch.setattr(metrics, "SHARE", 1e-4)
        monkeypatch.setattr(metrics, "SLICE", 16)
        monkeypatch.setattr(_session, "MAX_UNMEASURED", 300)
        reader = InMemoryMetricReader()
        tmr = Timer(
            export=True, output_dir=tmp_path, meter_provider=MeterProvider(metric_readers=[reader])
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(tmr, epochs=20, batches=50)
            began = time.monotonic()
            tmr.close()
        assert time.monotonic() - began < 10  # close stops the rests (unstopped: minutes)
        behind = [w for w in caught if issubclass(w.category, ExportWarning)]
        assert ["fell behind the loop" in str(w.message) for w in behind] == [True]
        assert tmr._export is not None
        dropped = tmr._export.metrics_dropped
        assert dropped > 0
        recorded = sum(p.count for (_, clock), p in _points(reader).items() if clock == "cpu")
        assert recorded + dropped == len(tmr.records())  # every region counted once
        assert tmr.get_time_stats("batch").count == 20 * 50  # the statistics keep them all

    def test_failed_regions_are_left_out_as_in_the_statistics(self, tmp_path: Path) -> None:
        reader = InMemoryMetricReader()
        tmr = Timer(
            export=True, output_dir=tmp_path, meter_provider=MeterProvider(metric_readers=[reader])
        )
        with tmr.region(TimeType.EPOCH):
            with tmr.region("load"):
                pass
            with pytest.raises(OSError, match="disk"), tmr.region("load"):
                raise OSError("disk")
        tmr.close()
        assert _points(reader)[("load", "cpu")].count == tmr.get_time_stats("load").count == 1

    def test_the_users_provider_is_not_shut_down(self, tmp_path: Path) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        tmr = Timer(export=True, output_dir=tmp_path, meter_provider=provider)
        with tmr.region("step"):
            pass
        tmr.close()
        provider.get_meter("user").create_counter("still.alive").add(1)
        data = reader.get_metrics_data()
        assert data is not None
        names = {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        assert "still.alive" in names

    def test_a_provider_without_get_meter_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="meter_provider"):
            Timer(export=True, output_dir=tmp_path, meter_provider=object())  # type: ignore[arg-type]


_GLOBAL_CHILD = """
import json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import maeltrace

reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
tmr = maeltrace.Timer(output_dir=sys.argv[1])
for _ in range(2):
    with tmr.region("epoch"), tmr.region("batch"):
        pass
tmr.close()
counts = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            for p in m.data.data_points:
                counts[p.attributes["maeltrace.key"]] = p.count
print(json.dumps({"counts": counts, "same": metrics.get_meter_provider() is provider}))
"""


def test_the_global_meter_provider_is_used_and_kept(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MAELTRACE_EXPORT": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"counts": {"epoch": 2, "batch": 2}, "same": True}


def test_no_provider_and_no_endpoint_records_nothing(tmp_path: Path) -> None:
    tmr = Timer(export=True, output_dir=tmp_path)
    with tmr.region("step"):
        pass
    assert tmr._export is not None
    tmr.flush(timeout_s=2.0)
    assert tmr._export.metrics is None
    tmr.close()


_METRICS_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ${env:OTELCOL_OTLP_GRPC}
      http:
        endpoint: ${env:OTELCOL_OTLP_HTTP}
exporters:
  file:
    path: ./metrics.jsonl
    flush_interval: 100ms
  debug: {}
service:
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [file]
    traces:
      receivers: [otlp]
      exporters: [debug]
"""


def _collected(
    path: Path, expected: dict[tuple[str, str], int], timeout_s: float = 30.0
) -> tuple[Counter[tuple[str, str]], list[dict]]:
    """The histogram's counts by (key, clock) in the Collector's file, and its resources."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        resources = []
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            for rm in json.loads(line).get("resourceMetrics", []):
                resources.append(rm.get("resource", {}))
                for sm in rm.get("scopeMetrics", []):
                    for metric in sm.get("metrics", []):
                        if metric["name"] != semconv.REGION_DURATION:
                            continue
                        assert metric["unit"] == "s"
                        for point in metric["histogram"]["dataPoints"]:
                            attrs = {
                                a["key"]: a["value"]["stringValue"] for a in point["attributes"]
                            }
                            key = (attrs[semconv.MAELTRACE_KEY], attrs[semconv.MAELTRACE_CLOCK])
                            # Cumulative temporality: the last point of a series is its total.
                            counts[key] = max(counts[key], int(point["count"]))
        if counts == expected or time.monotonic() > deadline:
            return counts, resources
        time.sleep(0.2)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_maeltraces_own_otlp_metrics_reach_a_real_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    config = tmp_path / "otelcol.yaml"
    config.write_text(_METRICS_CONFIG)
    monkeypatch.setenv("RANK", "2")
    with CollectorService(config=config, cwd=tmp_path) as otelcol:
        endpoint = otelcol.otlp_grpc_endpoint if protocol == "grpc" else otelcol.otlp_http_endpoint
        tmr = Timer(export=True, output_dir=tmp_path / "run", endpoint=endpoint, protocol=protocol)
        _train_cpu(tmr)
        tmr.close()
        expected = {("epoch", "cpu"): 2, ("batch", "cpu"): 6}
        counts, resources = _collected(tmp_path / "metrics.jsonl", expected)
    assert counts == expected
    ranks = {
        a["value"].get("intValue", a["value"].get("stringValue"))
        for r in resources
        for a in r.get("attributes", [])
        if a["key"] == semconv.MAELTRACE_RANK
    }
    assert ranks == {"2"}


def _train_cpu(tmr: Timer) -> None:
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in range(3):
                with tmr.region(TimeType.BATCH):
                    pass


def test_otel_metrics_exporter_none_turns_the_own_export_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    tmr = Timer(export=True, output_dir=tmp_path, endpoint="http://127.0.0.1:9/v1/traces")
    with tmr.region("step"):
        pass
    assert tmr._export is not None
    tmr.flush(timeout_s=2.0)
    assert tmr._export.metrics is None
    tmr.close(timeout_s=0.1)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_own_metrics_to_a_closed_port_are_at_most_one_warning_and_a_count(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    import logging
    import time
    import warnings

    from maeltrace.errors import ExportWarning
    from tests.services.process import free_port

    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")  # ms: an export every epoch
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")  # ms: each export gives up fast
    port = free_port()  # bound and released: nothing listens, connections are refused
    endpoint = f"http://127.0.0.1:{port}" + ("" if protocol == "grpc" else "/v1/traces")
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tmr = Timer(export=True, output_dir=tmp_path, endpoint=endpoint, protocol=protocol)
        done = 0
        for _ in range(5):
            with tmr.region(TimeType.EPOCH):
                for _ in range(3):
                    with tmr.region(TimeType.BATCH):
                        time.sleep(0.05)
                    done += 1
        assert tmr._export is not None
        tmr.flush(timeout_s=2.0)
        metrics = tmr._export.metrics
        assert metrics is not None and metrics.owned
        deadline = time.monotonic() + 10.0
        while metrics.errors < 2 and time.monotonic() < deadline:  # several intervals failed
            time.sleep(0.05)
        began = time.monotonic()
        tmr.close(timeout_s=2.0)
        closing_s = time.monotonic() - began
    assert done == 15  # training went on
    assert metrics.errors >= 2
    about_metrics = [
        w
        for w in caught
        if issubclass(w.category, ExportWarning) and "metrics were not sent" in str(w.message)
    ]
    about_spans = [
        w
        for w in caught
        if issubclass(w.category, ExportWarning) and "spans wait in" in str(w.message)
    ]
    # One warning per endpoint where possible: the metrics' own once the spans' has not told
    # of the endpoint yet (the two threads fail in either order), else only counted.
    assert len(about_spans) == 1, [str(w.message) for w in caught]
    assert len(about_metrics) <= 1, [str(w.message) for w in caught]
    if about_metrics:
        assert "later failures are only counted" in str(about_metrics[0].message)
    # Debug records stay: a user who turned them on asked for them.
    escaped = [
        r
        for r in caplog.records
        if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING
    ]
    assert escaped == [], [(r.name, r.getMessage()) for r in escaped]
    assert closing_s < 2.0 + 1.0


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_traces_only_endpoint_stops_the_own_metrics_with_one_info_line(
    jaeger: JaegerService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    """Straight to Jaeger, which has no metrics service (HTTP 404, gRPC UNIMPLEMENTED): the
    spans arrive, no warning, one INFO line on ``maeltrace``, and no export after the first."""
    import logging
    import uuid

    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")  # ms: an export every epoch
    service = f"traces-only-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    endpoint = (
        jaeger.otlp_grpc_endpoint
        if protocol == "grpc"
        else jaeger.otlp_http_endpoint + "/v1/traces"
    )
    caplog.set_level(logging.INFO, logger="maeltrace")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tmr = Timer(export=True, output_dir=tmp_path, endpoint=endpoint, protocol=protocol)
        for _ in range(4):
            with tmr.region(TimeType.EPOCH):
                for _ in range(3):
                    with tmr.region(TimeType.BATCH):
                        time.sleep(0.05)
        assert tmr._export is not None
        metrics = tmr._export.metrics
        tmr.close(timeout_s=10.0)
    assert metrics is not None
    assert metrics.no_metrics, (metrics.errors, [str(w.message) for w in caught])
    assert metrics.errors == 0
    assert not [w for w in caught if issubclass(w.category, ExportWarning)]
    lines = [r for r in caplog.records if "takes no metrics" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO]
    spans = jaeger.wait_for_spans(service, 4 * 4 + 1)
    assert sum(len(t["spans"]) for t in spans) == 4 * 4 + 1  # epochs, batches and the run

"""``Timer(exporter=...)``: an exporter object passed in, as OpenTelemetry's SDK takes span
processors; the pipeline's outbox, batching and never-harm behaviour stay."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from maeltrace import Timer, TimeType
from maeltrace.errors import ExportFailed, ExportWarning
from maeltrace.otel._otlp_json import read_json_lines
from maeltrace.otel.exporters import JsonLinesExporter, Request, request_message


class RecordingExporter:
    """Keeps every request it is given, as a message; ``fail`` makes it refuse them all."""

    def __init__(self, fail: ExportFailed | None = None) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.fail = fail
        self.shut_down = False
        self._lock = threading.Lock()

    def export(self, request: Request) -> None:
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self.requests.append(request_message(request))

    def shutdown(self) -> None:
        self.shut_down = True

    def span_names(self) -> list[str]:
        with self._lock:
            return [
                span.name
                for request in self.requests
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]


def _two_epochs(tmr: Timer) -> None:
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(3)):
                with tmr.region(TimeType.BATCH):
                    pass


def _two_epochs_and_close(tmr: Timer, timeout_s: float) -> None:
    _two_epochs(tmr)
    tmr.close(timeout_s=timeout_s)


class TestAnExporterObject:
    def test_spans_go_through_the_exporter_given(self, tmp_path: Path) -> None:
        exporter = RecordingExporter()
        tmr = Timer(export=True, output_dir=tmp_path, exporter=exporter)
        _two_epochs(tmr)
        tmr.close()
        names = exporter.span_names()
        assert sorted(names) == sorted(["epoch"] * 2 + ["io"] * 6 + ["batch"] * 6 + ["run"])
        assert exporter.shut_down
        assert not (tmp_path / "traces.otlp.jsonl").exists()  # not the embedded default
        health = tmr.export_health
        assert (health.spans_exported, health.spans_pending) == (len(names), 0)
        assert (tmp_path / "stats.json").is_file()

    def test_the_outbox_holds_the_spans_before_they_are_sent(self, tmp_path: Path) -> None:
        exporter = RecordingExporter()
        with Timer(export=True, output_dir=tmp_path, exporter=exporter) as tmr:
            _two_epochs(tmr)
        assert tmr.outbox_path.parent == tmp_path
        assert tmr.outbox_path.is_file()

    def test_an_exporter_that_fails_keeps_the_spans_in_the_outbox(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        exporter = RecordingExporter(fail=ExportFailed("down", retryable=True))
        tmr = Timer(export=True, output_dir=tmp_path, exporter=exporter)
        with pytest.warns(ExportWarning, match="down"):
            _two_epochs_and_close(tmr, timeout_s=0.5)
        assert tmr.export_health.spans_pending == 15
        assert "RecordingExporter" in capsys.readouterr().err
        assert tmr.outbox_path.is_file()

    def test_the_json_lines_exporter_can_be_given(self, tmp_path: Path) -> None:
        path = tmp_path / "mine.jsonl"
        tmr = Timer(export=True, output_dir=tmp_path / "run", exporter=JsonLinesExporter(path))
        with tmr.region("setup"):
            pass
        tmr.close()
        names = [
            span.name
            for data in read_json_lines(path)
            for rs in data.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        assert names == ["setup", "run"]

    def test_what_is_not_an_exporter_is_refused_at_the_call(self) -> None:
        with pytest.raises(TypeError, match=r"SpanExporter.*not str"):
            Timer(exporter="http://localhost:4318")  # type: ignore[arg-type]  # the point
        with pytest.raises(TypeError, match="not the class RecordingExporter"):
            Timer(enabled=False, exporter=RecordingExporter)  # type: ignore[arg-type]  # a class

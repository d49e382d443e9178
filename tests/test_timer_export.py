"""The timer's export: when spans leave, the embedded default's files, bad configuration, exit."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from maeltrace import Timer, TimeType
from maeltrace.otel._otlp_json import read_json_lines
from maeltrace.otel.export import ExportConfigError
from tests.helpers import outbox_span_names
from tests.services.jaeger import free_port


def _span_names(path: Path) -> list[str]:
    return [
        span.name
        for data in read_json_lines(path)
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def _wait_for(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        names = _span_names(path) if path.exists() else []
        if len(names) >= count or time.monotonic() > deadline:
            return names
        time.sleep(0.02)


class TestWhenSpansLeave:
    def test_an_epoch_leaves_when_it_ends_without_a_flush(self, tmp_path: Path) -> None:
        tmr = Timer(export=True, output_dir=tmp_path)
        with tmr.region(TimeType.EPOCH):
            with tmr.region(TimeType.BATCH):
                pass
            assert not tmr.traces_path.exists()  # still open: its regions wait for it
        assert sorted(_wait_for(tmr.traces_path, 2)) == ["batch", "epoch"]
        tmr.close()

    def test_flush_exports_regions_outside_epochs_and_close_adds_the_run_span(
        self, tmp_path: Path
    ) -> None:
        tmr = Timer(export=True, output_dir=tmp_path)
        with tmr.region("setup"):
            pass
        tmr.flush()
        assert _span_names(tmr.traces_path) == ["setup"]
        tmr.close()
        assert _span_names(tmr.traces_path) == ["setup", "run"]
        tmr.close()  # a second close does nothing
        assert _span_names(tmr.traces_path) == ["setup", "run"]

    def test_the_context_manager_closes_and_writes_every_file(self, tmp_path: Path) -> None:
        with Timer(export=True, output_dir=tmp_path) as tmr, tmr.region(TimeType.EPOCH):
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "stats.json",
            "stats.md",
            "trace.json",
            "traces.otlp.jsonl",
        ]
        stats = json.loads((tmp_path / "stats.json").read_text())
        assert [r["key"] for r in stats["regions"]] == ["epoch"]

    def test_an_open_timer_exports_at_interpreter_exit(self, tmp_path: Path) -> None:
        script = textwrap.dedent(
            f"""
            import maeltrace
            tmr = maeltrace.Timer(export=True, output_dir={str(tmp_path)!r})
            with tmr.region("epoch"):
                with tmr.region("batch"):
                    pass
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        assert (tmp_path / "stats.json").is_file()
        assert sorted(_span_names(tmp_path / "traces.otlp.jsonl")) == ["batch", "epoch", "run"]

    def test_export_off_keeps_everything_in_the_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MAELTRACE_OUTPUT_DIR", str(tmp_path))
        with Timer(export=False) as tmr, tmr.region("a"):
            pass
        assert list(tmp_path.iterdir()) == []
        assert tmr.get_time_stats("a").count == 1


class TestConfiguration:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "htp:/nowhere"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ],
    )
    def test_a_bad_variable_fails_when_the_timer_is_built_naming_it(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
    ) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        monkeypatch.setenv(variable, value)
        with pytest.raises(ExportConfigError, match=variable):
            Timer(export=True)
        with pytest.raises(ValueError, match=variable):  # an ExportConfigError is a ValueError
            Timer(export=True)

    def test_a_bad_endpoint_argument_fails_at_once(self) -> None:
        with pytest.raises(ExportConfigError, match="endpoint"):
            Timer(export=True, endpoint="not a url")

    def test_a_trace_budget_that_is_not_one_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match="TraceBudget"):
            Timer(export=True, trace_budget=5000)  # type: ignore[arg-type]  # the mistake

    def test_sdk_disabled_turns_export_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        assert not Timer(export=True).export

    def test_the_environment_turns_export_on_and_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAELTRACE_EXPORT", "1")
        assert Timer().export
        monkeypatch.setenv("MAELTRACE_EXPORT", "off")
        assert not Timer().export


class TestEndpointDown:
    def test_training_goes_on_and_every_span_waits_in_the_outbox(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        down = f"http://127.0.0.1:{free_port()}"
        tmr = Timer(export=True, endpoint=down, output_dir=tmp_path)
        started = time.perf_counter()
        for _ in range(3):
            with tmr.region(TimeType.EPOCH):
                for _ in tmr.iterate(range(5)):
                    with tmr.region(TimeType.BATCH):
                        pass
        loop_s = time.perf_counter() - started
        tmr.close()
        assert loop_s < 1.0  # the loop never waited for the endpoint (it takes ms)
        assert len(outbox_span_names(tmr.outbox_path)) == 3 * 11 + 1
        assert tmr.export_health.spans_pending == 3 * 11 + 1
        assert tmr.get_time_stats(TimeType.BATCH).count == 15


class TestStuckEndpoint:
    def test_close_keeps_what_a_silent_endpoint_holds_and_what_was_not_built(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An endpoint that accepts connections and never answers: each export waits out its
        # (long) timeout, so close() must not lose what is stuck behind it.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
        listener = socket.create_server(("127.0.0.1", 0))
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
            tmr = Timer(export=True, endpoint=endpoint, output_dir=tmp_path)
            with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
                pass  # the epoch's end starts an export that hangs
            with tmr.region("after"):
                pass
            started = time.monotonic()
            tmr.close(timeout_s=1.0)
            assert time.monotonic() - started < 10
            assert sorted(outbox_span_names(tmr.outbox_path)) == ["after", "batch", "epoch", "run"]
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
            listener.close()

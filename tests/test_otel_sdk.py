"""The SDK span path: regions as spans through the user's own OpenTelemetry TracerProvider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk (otel extra)")

from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace._version import __version__  # noqa: E402
from maeltrace.errors import ExportWarning  # noqa: E402
from maeltrace.otel import semconv  # noqa: E402
from tests.fakes.cuda import fake_gpu_clock  # noqa: E402  # a named fake GPU: none here

BOTH_RECORDERS = True


def _provider(**options: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(**options)  # type: ignore[arg-type]  # test options
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _train(tmr: Timer, epochs: int = 2, batches: int = 3) -> None:
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in range(batches):
                with tmr.region(TimeType.BATCH, gpu=True), tmr.region("forward"):
                    pass


def _by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


class TestSpansThroughTheUsersProvider:
    def test_every_region_is_a_span_with_its_gpu_child_and_the_run_span(
        self, tmp_path: Path
    ) -> None:
        provider, memory = _provider()
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        _train(tmr)
        tmr.close()
        names = _by_name(memory.get_finished_spans())
        assert {k: len(v) for k, v in names.items()} == {
            "epoch": 2,
            "batch": 6,
            "batch [gpu]": 6,
            "forward": 6,
            "run": 1,
        }
        assert tmr.export_health.spans_exported == 21
        # The embedded default's traces file is not written: the provider is the destination.
        assert not tmr.traces_path.exists()

    def test_parents_are_present_and_each_epoch_is_a_trace(self, tmp_path: Path) -> None:
        provider, memory = _provider()
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        _train(tmr)
        with tmr.region("evaluate"):  # outside epochs: under the run span
            pass
        tmr.close()
        spans = memory.get_finished_spans()
        by_id = {s.context.span_id: s for s in spans}
        for span in spans:
            if span.parent is not None:
                parent = by_id[span.parent.span_id]
                assert parent.context.trace_id == span.context.trace_id
        names = _by_name(spans)
        for epoch in names["epoch"]:
            assert epoch.parent is None
            assert epoch.attributes[semconv.MAELTRACE_RUN_ID] == tmr.run_id
        assert len({e.context.trace_id for e in names["epoch"]}) == 2
        for batch in names["batch"]:
            assert batch.parent is not None
            assert by_id[batch.parent.span_id].name == "epoch"
        for gpu in names["batch [gpu]"]:
            assert gpu.parent is not None and by_id[gpu.parent.span_id].name == "batch"
        for forward in names["forward"]:
            assert forward.parent is not None and by_id[forward.parent.span_id].name == "batch"
        (run,) = names["run"]
        (evaluate,) = names["evaluate"]
        assert evaluate.parent is not None and evaluate.parent.span_id == run.context.span_id
        linked = {link.context.span_id for link in run.links}
        assert linked == {e.context.span_id for e in names["epoch"]}

    def test_timestamps_are_the_regions_own_within_a_microsecond(self, tmp_path: Path) -> None:
        provider, memory = _provider()
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        _train(tmr, epochs=1, batches=5)
        tmr.close()
        records = tmr.records()
        offset = tmr.anchor.wall_time_unix_nano - tmr.anchor.perf_counter_ns
        names = _by_name(memory.get_finished_spans())
        forwards = sorted(names["forward"], key=lambda s: s.start_time or 0)
        durations = tmr.get_time("forward")
        starts = sorted(
            records.start_ns[i] + offset for i in records.rows(records.keys.index("forward"))
        )
        assert len(forwards) == len(durations) == len(starts) == 5
        for span, seconds, start in zip(forwards, durations, starts, strict=True):
            assert span.start_time is not None and span.end_time is not None
            assert abs(span.start_time - start) <= 1000
            assert abs((span.end_time - span.start_time) / 1e9 - seconds) <= 1e-6
            assert span.attributes[semconv.MAELTRACE_KEY] == "forward"

    def test_the_users_resource_and_the_tracers_scope(self, tmp_path: Path) -> None:
        provider, memory = _provider(resource=Resource.create({"service.name": "my-trainer"}))
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        _train(tmr, epochs=1, batches=1)
        tmr.close()
        spans = memory.get_finished_spans()
        assert spans
        for span in spans:
            assert span.resource.attributes["service.name"] == "my-trainer"
            scope = span.instrumentation_scope
            assert scope is not None
            assert (scope.name, scope.version, scope.schema_url) == (
                "maeltrace",
                __version__,
                semconv.SCHEMA_URL,
            )

    def test_a_failed_region_keeps_its_status_and_exception_event(self, tmp_path: Path) -> None:
        provider, memory = _provider()
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        with tmr.region(TimeType.EPOCH), pytest.raises(KeyError), tmr.region("load"):
            raise KeyError("shard-7")
        tmr.close()
        (load,) = _by_name(memory.get_finished_spans())["load"]
        assert load.status.status_code is StatusCode.ERROR
        assert [e.name for e in load.events] == [semconv.EXCEPTION_EVENT_NAME]

    def test_the_users_sampler_applies(self, tmp_path: Path) -> None:
        provider, memory = _provider(sampler=ALWAYS_OFF)
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        _train(tmr)
        tmr.close()
        assert memory.get_finished_spans() == ()
        assert tmr.export_health.spans_exported == 21


class _Raising(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise RuntimeError("collector on fire")

    def shutdown(self) -> None:
        pass


class _RaisingProcessor(SimpleSpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor on fire")


class TestFaultsInTheUsersPipeline:
    def test_a_raising_exporter_is_one_warning_and_training_goes_on(self, tmp_path: Path) -> None:
        provider = TracerProvider()
        raising = _Raising()
        provider.add_span_processor(SimpleSpanProcessor(raising))
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        # Spans go out at each epoch's end, on the export threads: the warning may come then.
        with pytest.warns(ExportWarning, match="collector on fire") as caught:  # noqa: PT031
            _train(tmr, epochs=3)
            tmr.close()
        assert len([w for w in caught if issubclass(w.category, ExportWarning)]) == 1
        assert raising.calls == 3 * 10 + 1  # every span was offered
        assert tmr.get_time_stats("batch").count == 9

    def test_a_raising_processor_is_one_warning_too(self, tmp_path: Path) -> None:
        provider = TracerProvider()
        provider.add_span_processor(_RaisingProcessor(InMemorySpanExporter()))
        tmr = Timer(
            export=True, output_dir=tmp_path, device=fake_gpu_clock, tracer_provider=provider
        )
        # Spans go out at each epoch's end, on the export threads: the warning may come then.
        with pytest.warns(ExportWarning, match="processor on fire") as caught:  # noqa: PT031
            _train(tmr)
            tmr.close()
        assert len([w for w in caught if issubclass(w.category, ExportWarning)]) == 1

    def test_a_provider_without_get_tracer_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="tracer_provider"):
            Timer(export=True, output_dir=tmp_path, tracer_provider=object())  # type: ignore[arg-type]


_GLOBAL_CHILD = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import maeltrace

memory = InMemorySpanExporter()
if sys.argv[1] == "global":
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
before = trace.get_tracer_provider()
tmr = maeltrace.Timer(output_dir=sys.argv[2])
with tmr.region("epoch"), tmr.region("batch"):
    pass
tmr.close()
print(json.dumps({
    "spans": sorted(s.name for s in memory.get_finished_spans()),
    "traces_file": tmr.traces_path.exists(),
    "same_provider": trace.get_tracer_provider() is before,
}))
"""

_UNTOUCHED_CHILD = """
import json, sys
import maeltrace
tmr = maeltrace.Timer(output_dir=sys.argv[1])
with tmr.region("epoch"):
    pass
tmr.close()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))))
"""


_EXIT_CHILD = """
import json, sys
import maeltrace  # first, as most scripts do: its exit handler is older than the provider's
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult


class Lines:  # writes each span's name as it gets it: what reached the exporter before exit
    def export(self, spans):
        with open(sys.argv[2], "a") as f:
            f.writelines(s.name + "\\n" for s in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


provider = TracerProvider()  # shuts itself down at exit (shutdown_on_exit)
provider.add_span_processor(SimpleSpanProcessor(Lines()))
tmr = maeltrace.Timer(output_dir=sys.argv[1], tracer_provider=provider)
for _ in range(2):
    with tmr.region("epoch"):
        for _ in range(3):
            with tmr.region("batch"):
                pass
print(json.dumps("left open"))  # closed at exit, not here
"""


def _child(code: str, *args: str) -> object:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["MAELTRACE_EXPORT"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class TestTheGlobalProvider:
    def test_a_global_sdk_provider_is_used_and_never_replaced(self, tmp_path: Path) -> None:
        result = _child(_GLOBAL_CHILD, "global", str(tmp_path))
        assert result == {
            "spans": ["batch", "epoch", "run"],
            "traces_file": False,
            "same_provider": True,
        }

    def test_without_one_the_fast_path_writes_its_file(self, tmp_path: Path) -> None:
        result = _child(_GLOBAL_CHILD, "none", str(tmp_path))
        assert result == {"spans": [], "traces_file": True, "same_provider": True}

    def test_maeltrace_imports_no_sdk_the_user_did_not(self, tmp_path: Path) -> None:
        assert _child(_UNTOUCHED_CHILD, str(tmp_path)) == []

    def test_at_exit_every_span_reaches_a_provider_built_after_the_import(
        self, tmp_path: Path
    ) -> None:
        # The provider's own exit handler shuts it down; maeltrace's must run before it, or
        # the spans of the epochs still in the outbox are dropped by a provider shut down.
        lines = tmp_path / "spans.txt"
        assert _child(_EXIT_CHILD, str(tmp_path / "out"), str(lines)) == "left open"
        names = sorted(lines.read_text().split())
        assert names == sorted(["epoch"] * 2 + ["batch"] * 6 + ["run"])


def test_without_a_provider_the_fast_path_is_unchanged(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tmr = Timer(export=True, output_dir=tmp_path)
        with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
            pass
        tmr.close()
    assert tmr.traces_path.exists()
